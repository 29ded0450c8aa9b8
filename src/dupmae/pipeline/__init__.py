"""`dupmae run CONFIG`: the one-command domain-adaptation pipeline (baselines, DupMAE, report).

config.py (settings), data.py (finding / downloading the collection), stages.py (what each stage
does, by calling the verbs' functions), run.py (caching, progress, the verb), report.py and
significance.py (the report). See docs/pipeline.md.
"""
