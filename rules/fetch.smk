# Models, datasets and the statistics corpus, each from a pinned source string in params.yaml.
localrules: fetch_model, fetch_dataset, fetch_corpus, make_heldout

# Online sources are pinned in these files on first use (commit and sha256s), reviewed in git.
DATASET_LOCK = "datasets.lock.json"
MODEL_LOCK = "models.lock.json"
CORPUS_LOCK = "corpora.lock.json"


rule fetch_model:
    output:
        directory("data/models/{model}"),
    params:
        source=lambda w: cfg["models"][w.model]["source"],
        content=lambda w: local_content(cfg["models"][w.model]["source"]),  # see local_content
        sha256=lambda w: sha256_flag(cfg["models"][w.model].get("sha256")),
        trust=("--trust-remote-code" if cfg["trust_remote_code"] else ""),
        lock=MODEL_LOCK,
    log:
        "logs/fetch_model/{model}.log",
    benchmark:
        "benchmarks/fetch_model/{model}.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "editharm --log {log} fetch-model --name {wildcards.model} --source {params.source:q} --lock {params.lock} "
        "--out {output} {params.sha256} {params.trust}"


rule fetch_dataset:
    output:
        directory("data/datasets/{dataset}"),
    params:
        source=lambda w: cfg["datasets"][w.dataset],
        content=lambda w: local_content(cfg["datasets"][w.dataset]),
        lock=DATASET_LOCK,
    log:
        "logs/fetch_dataset/{dataset}.log",
    resources:
        mem_mb=1000,
        runtime=30,
    shell:
        "editharm --log {log} fetch-dataset --name {wildcards.dataset} --source {params.source:q} "
        "--lock {params.lock} --out {output}"


rule fetch_corpus:
    output:
        f"data/corpora/{CORPUS}.jsonl",
    params:
        source=cfg["stats"].get("corpus", ""),
        content=local_content(cfg["stats"].get("corpus", "")),
        sha256=sha256_flag(cfg["stats"].get("sha256")),
        n=cfg["stats"]["n"],
        lock=CORPUS_LOCK,
    log:
        f"logs/fetch_corpus/{CORPUS}.log",
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "editharm --log {log} fetch-corpus --source {params.source:q} --n {params.n} --lock {params.lock} "
        "--out {output} {params.sha256}"


# Held-out texts for the perplexity probe: the first usable texts of its corpus that the statistics did not read.
rule make_heldout:
    input:
        exclude=STATS_TEXTS,
    output:
        "data/probes/heldout.jsonl",
    params:
        args=HELDOUT_ARGS,
        content=local_content((ehc.perplexity_probe(cfg) or {}).get("corpus"), HELDOUT_ARGS),
        lock=CORPUS_LOCK,
    log:
        "logs/make_heldout.log",
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "editharm --log {log} make-heldout {params.args} --lock {params.lock} --exclude {input.exclude} --out {output}"
