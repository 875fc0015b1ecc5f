# Second-moment statistics E[k kT] per (model, module), computed once and shared by every method.


rule collect_stats:
    input:
        model="data/models/{model}",
        corpus=f"data/corpora/stats-n{cfg['stats']['n']}.jsonl",
    output:
        "data/stats/{model}/{module}.safetensors",
    params:
        n=cfg["stats"]["n"],
        max_length=cfg["stats"]["max_length"],
        device=cfg["device"],
        dtype=cfg["dtype"],
    threads: cfg["threads"]
    log:
        "logs/collect_stats/{model}/{module}.log",
    benchmark:
        "benchmarks/collect_stats/{model}/{module}.tsv"
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=GPU,
    shell:
        "editharm --log {log} collect-stats --model {input.model} --module {wildcards.module} "
        "--corpus {input.corpus} --n {params.n} --max-length {params.max_length} --device {params.device} "
        "--dtype {params.dtype} --threads {threads} --out {output}"
