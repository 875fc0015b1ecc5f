# Every checkpoint (base + dW) on every general task, and on the editing metrics of its edits so far.


rule evaluate_base:
    input:
        model="data/models/{model}",
        data=get_task_data,
    output:
        predictions="data/eval/{model}/base/{task}.parquet",
        metrics="data/eval/{model}/base/{task}.json",
    params:
        options=lambda w: as_json(ehc.task_options(cfg, w.task)),
        labels=lambda w: labels(w, method="base", reg="none", setting="base", seq=0, step=0),
        device=cfg["device"],
        dtype=cfg["dtype"],
    threads: cfg["threads"]
    log:
        "logs/evaluate_base/{model}/{task}.log",
    benchmark:
        "benchmarks/evaluate_base/{model}/{task}.tsv"
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=GPU,
    shell:
        "editharm --log {log} evaluate-task --model {input.model} --task {wildcards.task} --data {input.data} "
        "--options {params.options:q} --labels {params.labels:q} --device {params.device} --dtype {params.dtype} "
        "--threads {threads} --out-predictions {output.predictions} --out-metrics {output.metrics}"


rule evaluate_task:
    input:
        model="data/models/{model}",
        delta=get_delta,
        data=get_task_data,
    output:
        predictions="data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/step-{step}/{task}.parquet",
        metrics="data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/step-{step}/{task}.json",
    params:
        options=lambda w: as_json(ehc.task_options(cfg, w.task)),
        labels=lambda w: labels(w),
        device=cfg["device"],
        dtype=cfg["dtype"],
    threads: cfg["threads"]
    log:
        "logs/evaluate_task/{model}/{method}/{reg}/{setting}/seq{seq}/step-{step}/{task}.log",
    benchmark:
        "benchmarks/evaluate_task/{model}/{method}/{reg}/{setting}/seq{seq}/step-{step}/{task}.tsv"
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=GPU,
    shell:
        "editharm --log {log} evaluate-task --model {input.model} --delta {input.delta} --task {wildcards.task} "
        "--data {input.data} --options {params.options:q} --labels {params.labels:q} --device {params.device} "
        "--dtype {params.dtype} --threads {threads} --out-predictions {output.predictions} "
        "--out-metrics {output.metrics}"


rule evaluate_edits:
    input:
        model="data/models/{model}",
        delta=get_delta,
        sequence="data/sequences/seq{seq}.parquet",
    output:
        predictions="data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/step-{step}/editing.parquet",
        metrics="data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/step-{step}/editing.json",
    params:
        labels=lambda w: labels(w),
        fluency=cfg["evaluation"]["fluency_tokens"],
        device=cfg["device"],
        dtype=cfg["dtype"],
    threads: cfg["threads"]
    log:
        "logs/evaluate_edits/{model}/{method}/{reg}/{setting}/seq{seq}/step-{step}.log",
    benchmark:
        "benchmarks/evaluate_edits/{model}/{method}/{reg}/{setting}/seq{seq}/step-{step}.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=GPU,
    shell:
        "editharm --log {log} evaluate-edits --model {input.model} --delta {input.delta} "
        "--sequence {input.sequence} --labels {params.labels:q} --fluency-tokens {params.fluency} --device {params.device} --dtype {params.dtype} "
        "--threads {threads} --out-predictions {output.predictions} --out-metrics {output.metrics}"
