# Second-moment statistics E[k kT] per (model, corpus and n, module), computed once and shared by every
# method and regularizer that needs them.


rule collect_stats:
    input:
        model="data/models/{model}",
        corpus=f"data/corpora/{CORPUS}.jsonl",
    output:
        f"data/stats/{{model}}/{CORPUS}/{{module}}.safetensors",
    params:
        n=cfg["stats"]["n"],
        max_length=cfg["stats"]["max_length"],
        device=cfg["device"],
        dtype=cfg["dtype"],
    threads: cfg["threads"]
    log:
        f"logs/collect_stats/{{model}}/{CORPUS}/{{module}}.log",
    benchmark:
        f"benchmarks/collect_stats/{{model}}/{CORPUS}/{{module}}.tsv"
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=GPU,
    shell:
        "editharm --log {log} collect-stats --model {input.model} --module {wildcards.module} "
        "--corpus {input.corpus} --n {params.n} --max-length {params.max_length} --device {params.device} "
        "--dtype {params.dtype} --threads {threads} --out {output}"
