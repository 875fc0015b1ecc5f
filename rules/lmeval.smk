# Extra probes: lm-evaluation-harness tasks on every checkpoint of a configuration, one job per
# configuration on one loaded model (and one for the unedited model). Off while
# evaluation.lm_eval.tasks is empty; the jobs need the extra editharm[lmeval], and lm-eval's own
# tasks read their data from the Hugging Face Hub (or a prepared cache with HF_DATASETS_OFFLINE=1).
rule evaluate_lmeval_base:
    input:
        model="data/models/{model}",
    output:
        metrics="data/eval/{model}/base/lmeval.json",
        samples="data/eval/{model}/base/lmeval-samples.parquet",
    params:
        args=LMEVAL_ARGS,
        labels=lambda w: labels(w, method="base", reg="none", setting="base", seq=0, step=0, demo=False),
        device=cfg["device"],
        dtype=cfg["dtype"],
    threads: cfg["threads"]
    log:
        "logs/evaluate_lmeval_base/{model}.log",
    benchmark:
        "benchmarks/evaluate_lmeval_base/{model}.tsv"
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=GPU,
    shell:
        "editharm --log {log} lm-eval --model {input.model} {params.args} --labels {params.labels:q} "
        "--device {params.device} --dtype {params.dtype} --threads {threads} "
        "--out-metrics {output.metrics} --out-samples {output.samples}"


rule evaluate_lmeval:
    input:
        model="data/models/{model}",
        deltas=get_lmeval_deltas,
    output:
        metrics="data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/lmeval.json",
        samples="data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/lmeval-samples.parquet",
    params:
        args=LMEVAL_ARGS,
        labels=lambda w: labels(w, demo=False),
        device=cfg["device"],
        dtype=cfg["dtype"],
    threads: cfg["threads"]
    log:
        "logs/evaluate_lmeval/{model}/{method}/{reg}/{setting}/seq{seq}.log",
    benchmark:
        "benchmarks/evaluate_lmeval/{model}/{method}/{reg}/{setting}/seq{seq}.tsv"
    resources:
        mem_mb=16000,
        runtime=480,
        gpu=GPU,
    shell:
        "editharm --log {log} lm-eval --model {input.model} --delta {input.deltas} {params.args} "
        "--labels {params.labels:q} --device {params.device} --dtype {params.dtype} --threads {threads} "
        "--out-metrics {output.metrics} --out-samples {output.samples}"
