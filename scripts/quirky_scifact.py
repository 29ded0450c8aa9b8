"""SciFact test with the quirks of real collections, to show `dupmae beir` handles them.

Writes a BEIR folder that is SciFact's test split plus:
- two empty documents (`""` title and text; one has only whitespace): indexed and counted;
- an empty query nobody judged, and whitespace-only query text for one judged query (it is
  never searched and scores 0, with a warning);
- 20 judged-but-unasked queries' worth of grade-0 judgements (a query judged only with grade 0
  counts in the mean with 0), and the train queries left in queries.jsonl without judgements.

    python scripts/quirky_scifact.py ../shared/data/scifact runs/quirky-scifact
    dupmae beir --bm25 --collections ../shared/data/scifact runs/quirky-scifact --output runs/beir-demo
    dupmae evaluate --run runs/beir-demo/collections/quirky-scifact/bm25/run.trec \\
        --qrels runs/quirky-scifact/qrels/test.tsv

Queries and documents are otherwise SciFact's own, so a system's numbers on the two folders differ
only by what the quirks do to the mean: the judged empty query scores 0, and the grade-0-only
queries add zeros.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scifact", help="SciFact BEIR folder")
    parser.add_argument("output", help="folder to write")
    args = parser.parse_args()
    source, out = Path(args.scifact), Path(args.output)
    (out / "qrels").mkdir(parents=True, exist_ok=True)

    corpus = (source / "corpus.jsonl").read_text(encoding="utf-8")
    empty_documents = [{"_id": "empty-1", "title": "", "text": ""}, {"_id": "empty-2", "title": " ", "text": "\t"}]
    (out / "corpus.jsonl").write_text(corpus + "".join(json.dumps(d) + "\n" for d in empty_documents),
                                      encoding="utf-8")

    qrel_lines = (source / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    header, judgements = qrel_lines[0], [line.split("\t") for line in qrel_lines[1:] if line.strip()]
    test_ids = list(dict.fromkeys(q for q, _, _ in judgements))
    blanked = test_ids[0]  # a judged query whose text is whitespace only
    queries = []
    for line in (source / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["_id"] == blanked:
            record["text"] = "   "
        queries.append(record)
    queries.append({"_id": "unjudged-empty", "text": ""})
    (out / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")

    # grade-0 judgements: for 20 queries without test judgements (train queries), one document each
    judged = set(test_ids)
    zero_only = [q["_id"] for q in queries if q["_id"] not in judged and q["text"].strip()][:20]
    extra = [[q, judgements[i][1], "0"] for i, q in enumerate(zero_only)]
    (out / "qrels" / "test.tsv").write_text(
        "\n".join([header] + ["\t".join(row) for row in judgements + extra]) + "\n", encoding="utf-8")
    print(json.dumps({"output": str(out), "blanked_judged_query": blanked, "grade_zero_only_queries": len(extra),
                      "empty_documents": len(empty_documents)}))


if __name__ == "__main__":
    main()
