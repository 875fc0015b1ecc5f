# Every checkpoint (base + dW) on every general task, on the editing metrics of its edits so far, and
# how far its edits moved the weights (weight_change).


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
        cache=cache_flag(),
        bootstrap=bootstrap_flag(),
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
        "--options {params.options:q} --labels {params.labels:q} {params.cache} {params.bootstrap} --device {params.device} "
        "--dtype {params.dtype} --threads {threads} --out-predictions {output.predictions} --out-metrics {output.metrics}"


# One job per (configuration, task): the base model is loaded once and each checkpoint's dW is
# added and taken off in turn, and the prediction cache skips items any job decoded before.
for _setting in SETTINGS:
    _edit_steps = [s for s in SETTING_STEPS[_setting] if s > 0]

    rule:
        name:
            f"evaluate_{_setting}"
        input:
            model="data/models/{model}",
            deltas=lambda w, steps=_edit_steps, setting=_setting: step_deltas(w, setting, steps),
            data=get_task_data,
        output:
            predictions=expand(
                "data/eval/{{model}}/{{method}}/{{reg}}/{setting}/seq{{seq}}/step-{step}/{{task}}.parquet",
                setting=_setting, step=_edit_steps,
            ),
            metrics=expand(
                "data/eval/{{model}}/{{method}}/{{reg}}/{setting}/seq{{seq}}/step-{step}/{{task}}.json",
                setting=_setting, step=_edit_steps,
            ),
        params:
            options=lambda w: as_json(ehc.task_options(cfg, w.task)),
            labels=lambda w, setting=_setting: labels(w, setting=setting),
            cache=cache_flag(),
            bootstrap=bootstrap_flag(),
            device=cfg["device"],
            dtype=cfg["dtype"],
        threads: cfg["threads"]
        log:
            f"logs/evaluate/{{model}}/{{method}}/{{reg}}/{_setting}/seq{{seq}}/{{task}}.log",
        benchmark:
            f"benchmarks/evaluate/{{model}}/{{method}}/{{reg}}/{_setting}/seq{{seq}}/{{task}}.tsv"
        resources:
            mem_mb=8000,
            runtime=240,
            gpu=GPU,
        shell:
            "editharm --log {log} evaluate-task --model {input.model} --delta {input.deltas} "
            "--task {wildcards.task} --data {input.data} --options {params.options:q} --labels {params.labels:q} "
            "{params.cache} {params.bootstrap} --device {params.device} --dtype {params.dtype} --threads {threads} "
            "--out-predictions {output.predictions} --out-metrics {output.metrics}"

    rule:
        name:
            f"evaluate_edits_{_setting}"
        input:
            model="data/models/{model}",
            deltas=lambda w, steps=_edit_steps, setting=_setting: step_deltas(w, setting, steps),
            sequence="data/sequences/seq{seq}.parquet",
        output:
            predictions=expand(
                "data/eval/{{model}}/{{method}}/{{reg}}/{setting}/seq{{seq}}/step-{step}/editing.parquet",
                setting=_setting, step=_edit_steps,
            ),
            metrics=expand(
                "data/eval/{{model}}/{{method}}/{{reg}}/{setting}/seq{{seq}}/step-{step}/editing.json",
                setting=_setting, step=_edit_steps,
            ),
        params:
            labels=lambda w, setting=_setting: labels(w, setting=setting),
            fluency=cfg["evaluation"]["fluency_tokens"],
            bootstrap=bootstrap_flag(),
            device=cfg["device"],
            dtype=cfg["dtype"],
        threads: cfg["threads"]
        log:
            f"logs/evaluate_edits/{{model}}/{{method}}/{{reg}}/{_setting}/seq{{seq}}.log",
        benchmark:
            f"benchmarks/evaluate_edits/{{model}}/{{method}}/{{reg}}/{_setting}/seq{{seq}}.tsv"
        resources:
            mem_mb=8000,
            runtime=120,
            gpu=GPU,
        shell:
            "editharm --log {log} evaluate-edits --model {input.model} --delta {input.deltas} "
            "--sequence {input.sequence} --labels {params.labels:q} --fluency-tokens {params.fluency} {params.bootstrap} "
            "--device {params.device} --dtype {params.dtype} --threads {threads} "
            "--out-predictions {output.predictions} --out-metrics {output.metrics}"


# Held-out perplexity (probes.perplexity): one job per configuration scores every checkpoint on one
# loaded model, and one the unedited model.
rule evaluate_perplexity_base:
    input:
        model="data/models/{model}",
        texts="data/probes/heldout.jsonl",
    output:
        predictions="data/eval/{model}/base/perplexity.parquet",
        metrics="data/eval/{model}/base/perplexity.json",
    params:
        args=PERPLEXITY_ARGS,
        bootstrap=bootstrap_flag(),
        labels=lambda w: labels(w, method="base", reg="none", setting="base", seq=0, step=0, demo=False),
        device=cfg["device"],
        dtype=cfg["dtype"],
    threads: cfg["threads"]
    log:
        "logs/evaluate_perplexity_base/{model}.log",
    benchmark:
        "benchmarks/evaluate_perplexity_base/{model}.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=GPU,
    shell:
        "editharm --log {log} perplexity --model {input.model} --texts {input.texts} {params.args} "
        "{params.bootstrap} --labels {params.labels:q} --device {params.device} --dtype {params.dtype} --threads {threads} "
        "--out-predictions {output.predictions} --out-metrics {output.metrics}"


for _setting in SETTINGS:
    _edit_steps = [s for s in SETTING_STEPS[_setting] if s > 0]

    rule:
        name:
            f"evaluate_perplexity_{_setting}"
        input:
            model="data/models/{model}",
            deltas=lambda w, steps=_edit_steps, setting=_setting: step_deltas(w, setting, steps),
            texts="data/probes/heldout.jsonl",
        output:
            predictions=expand(
                "data/eval/{{model}}/{{method}}/{{reg}}/{setting}/seq{{seq}}/step-{step}/perplexity.parquet",
                setting=_setting, step=_edit_steps,
            ),
            metrics=expand(
                "data/eval/{{model}}/{{method}}/{{reg}}/{setting}/seq{{seq}}/step-{step}/perplexity.json",
                setting=_setting, step=_edit_steps,
            ),
        params:
            args=PERPLEXITY_ARGS,
            bootstrap=bootstrap_flag(),
            labels=lambda w, setting=_setting: labels(w, setting=setting, demo=False),
            device=cfg["device"],
            dtype=cfg["dtype"],
        threads: cfg["threads"]
        log:
            f"logs/evaluate_perplexity/{{model}}/{{method}}/{{reg}}/{_setting}/seq{{seq}}.log",
        benchmark:
            f"benchmarks/evaluate_perplexity/{{model}}/{{method}}/{{reg}}/{_setting}/seq{{seq}}.tsv"
        resources:
            mem_mb=8000,
            runtime=120,
            gpu=GPU,
        shell:
            "editharm --log {log} perplexity --model {input.model} --delta {input.deltas} --texts {input.texts} "
            "{params.args} {params.bootstrap} --labels {params.labels:q} --device {params.device} --dtype {params.dtype} "
            "--threads {threads} --out-predictions {output.predictions} --out-metrics {output.metrics}"


# How far each checkpoint's edits moved the edited matrices (no GPU: it reads dW files and the base weights).
rule weight_change:
    input:
        model="data/models/{model}",
        deltas=get_config_deltas,
    output:
        stats="data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/weights.parquet",
        heatmap="data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/heatmap.parquet",
    params:
        thresholds=" ".join(map(str, cfg["weights"]["thresholds"])),
        bins=cfg["weights"]["heatmap_bins"],
        labels=lambda w: labels(w),
    log:
        "logs/weight_change/{model}/{method}/{reg}/{setting}/seq{seq}.log",
    resources:
        mem_mb=16000,
        runtime=60,
    shell:
        "editharm --log {log} weight-change --model {input.model} --deltas {input.deltas} "
        "--thresholds {params.thresholds} --bins {params.bins} --labels {params.labels:q} --out-stats {output.stats} "
        "--out-heatmap {output.heatmap}"
