"""The stages of fine-tuning rounds 2 and 3 and of the cross-encoder teacher (DUPMAE.md §3).

    eval-S1 ── mine-r2-S1 ──> S-r2 (retrained from S1's own start)          [round 2]
    mine ── teacher ─┬─ rerank (BM25's top k re-ordered)                    [BM25 + rerank]
                     └─ teacher-scores-N ──> S-distill (+ KL to the teacher)  [round 3]

S1 is a first-round fine-tuning stage (`finetune-R`, `dupmae-finetune-R`); N is the negatives the
distilled student trains on (`mine-r2-S1` by default, or BM25's `mine`). Each function calls the
verbs' own typed functions (`search_index` + `mine_negatives`, `train_reranker`,
`score_training_pairs`, `rerank_run`); `dupmae.pipeline.stages.plan` chains them.
"""

from __future__ import annotations

from pathlib import Path

from dupmae.pipeline.context import Context, context_splits, drop_checkpoints, train_once, write_runs, write_yaml


def run_mine_round2(context: Context, model_stage: str, eval_stage: str) -> dict:
    """`dupmae mine --model MODEL` with the stage-1 model, searching the index its eval stage encoded."""
    from dupmae.modeling.retriever import Retriever
    from dupmae.retrieval.mine import load_inputs, mine_negatives, write_jsonl
    from dupmae.retrieval.search import search_index

    env = context.env
    depth, encode = env.config.round2.depth, env.config.encode
    _, queries, qrels = load_inputs(str(env.collection.corpus), str(env.collection.queries),
                                    str(env.collection.train_qrels))
    retriever = Retriever.from_pretrained(context.inputs[model_stage].path("model"), batch_size=encode.batch_size,
                                          bf16=encode.bf16)
    results = search_index(retriever, context.inputs[eval_stage].path("index"), queries, depth)
    records = mine_negatives(results, qrels, depth)
    count = write_jsonl(str(context.folder / "negatives.jsonl"), records)
    return {"negatives": "negatives.jsonl", "queries": count,
            "negatives_per_query": sum(len(r["negatives"]) for r in records) / max(count, 1)}


def teacher_start(env) -> Path:
    """The folder the teacher is trained from: `teacher.model`, else the pipeline's starting model."""
    from dupmae.pipeline.data import resolve_model

    return resolve_model(env.config.teacher.model)[0] if env.config.teacher.model else env.model_path


def run_teacher(context: Context) -> dict:
    """`teacher.path` as is, or `dupmae train-reranker` on the train queries (dev held out) + BM25 negatives."""
    from dupmae.modeling.cross_encoder import load_cross_encoder
    from dupmae.training.reranker import parse_arguments, train_reranker

    env, config = context.env, context.env.config
    settings = config.teacher
    if settings.path:
        load_cross_encoder(settings.path, settings.max_length)  # fails here, not in a later stage
        return {"model": str(Path(settings.path).absolute()), "trained": False}
    output = context.folder / "model"
    values = {"split": config.train_split, "dev_fraction": config.dev_fraction, "seed": config.seed,
              "loss": settings.loss, "negative_depth": settings.negative_depth,
              "negatives_per_query": settings.negatives_per_query,
              "max_length": settings.max_length, "num_train_epochs": settings.num_train_epochs,
              "per_device_train_batch_size": settings.per_device_train_batch_size,
              "learning_rate": settings.learning_rate, "bf16": settings.bf16, "report_to": "none",
              "disable_tqdm": True}
    argv = ["--config", str(write_yaml(context.folder / "reranker.yaml", values)), "--model", str(teacher_start(env)),
            "--data", str(env.collection.folder), "--negatives", str(context.inputs["mine"].path("negatives")),
            "--output", str(output)]

    def train(resume: bool) -> int:
        return train_reranker(*parse_arguments(argv + (["--resume"] if resume else []))).state.global_step

    step, resumed = train_once(context, "teacher", output, train)
    drop_checkpoints(output, config.keep_checkpoints)
    return {"model": "model", "trained": True, "resumed": resumed, "global_step": step}


def run_teacher_scores(context: Context, negatives_stage: str) -> dict:
    """`dupmae score-pairs`: the teacher's logits of each train query's positives and top negatives."""
    from dupmae.training.score_pairs import score_training_pairs

    env, config = context.env, context.env.config
    score_training_pairs(context.inputs["teacher"].path("model"), env.collection.folder,
                         context.inputs[negatives_stage].path("negatives"), context.folder / "teacher_scores.jsonl",
                         config.distill.depth, config.train_split, config.dev_fraction, config.teacher.max_length,
                         config.teacher.batch_size, config.teacher.bf16, reuse_output=True)
    return {"scores": "teacher_scores.jsonl"}


def run_rerank(context: Context) -> dict:
    """`dupmae rerank` of BM25's run on every split: its top `rerank.top_k` ordered by the teacher."""
    from dupmae.data.beir import load_corpus, load_qrels, load_queries, searchable_queries
    from dupmae.modeling.cross_encoder import load_cross_encoder
    from dupmae.retrieval.rerank import rerank_run
    from dupmae.retrieval.trec import read_run

    env, config = context.env, context.env.config
    model = load_cross_encoder(context.inputs["teacher"].path("model"), config.teacher.max_length)
    corpus, queries = load_corpus(str(env.collection.corpus)), load_queries(str(env.collection.queries))
    results = {}
    for split, qrels in context_splits(context):
        run = read_run(str(context.inputs["bm25"].path_of("runs", split)))
        results[split] = rerank_run(model, run, searchable_queries(queries, load_qrels(str(qrels)), str(qrels)),
                                    corpus, config.rerank.top_k, context.folder / f"{split}.scores.jsonl",
                                    config.teacher.batch_size, config.teacher.bf16, reuse_output=True)
    return write_runs(context, results)
