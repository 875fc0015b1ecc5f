# One pass per configuration and setting writes the dW held by the model at every checkpoint step;
# trainable methods (MEND) first train their editor once per model.


rule train_editor:
    input:
        model="data/models/{model}",
        records=lambda w: f"data/datasets/{ehc.train_dataset(cfg, w.method)}",
    output:
        "data/editors/{model}/{method}.safetensors",
    params:
        method=get_method,
        seed=cfg["seed"],
        device=cfg["device"],
        dtype=cfg["dtype"],
    threads: cfg["threads"]
    log:
        "logs/train_editor/{model}/{method}.log",
    benchmark:
        "benchmarks/train_editor/{model}/{method}.tsv"
    resources:
        mem_mb=32000,
        runtime=480,
        gpu=GPU,
    shell:
        "editharm --log {log} train-editor --model {input.model} --method {params.method:q} "
        "--records {input.records} --seed {params.seed} --device {params.device} --dtype {params.dtype} "
        "--threads {threads} --out {output}"


# A setting fixes the checkpoint steps, and a rule's outputs cannot depend on a wildcard: one rule each.
for _setting in SETTINGS:

    rule:
        name:
            f"apply_edits_{_setting}"
        input:
            model="data/models/{model}",
            sequence="data/sequences/seq{seq}.parquet",
            stats=get_stats,
            editor=get_editor,
        output:
            expand(
                "data/edits/{{model}}/{{method}}/{{reg}}/{setting}/seq{{seq}}/step-{step}.safetensors",
                setting=_setting,
                step=SETTING_STEPS[_setting],
            ),
        params:
            method=get_method,
            reg=get_regularizer,
            setting=as_json(ehc.setting_spec(cfg, _setting)),
            steps=",".join(map(str, SETTING_STEPS[_setting])),
            seed=get_seed,
            editor=lambda w, input: f"--editor {input.editor}" if input.editor else "",
            device=cfg["device"],
            dtype=cfg["dtype"],
        threads: cfg["threads"]
        log:
            f"logs/apply_edits/{{model}}/{{method}}/{{reg}}/{_setting}/seq{{seq}}.log",
        benchmark:
            f"benchmarks/apply_edits/{{model}}/{{method}}/{{reg}}/{_setting}/seq{{seq}}.tsv"
        resources:
            mem_mb=16000,
            runtime=240,
            gpu=GPU,
        shell:
            "editharm --log {log} apply-edits --model {input.model} --sequence {input.sequence} "
            "--method {params.method:q} --reg {params.reg:q} --setting {params.setting:q} --steps {params.steps} "
            "--stats {input.stats} {params.editor} --seed {params.seed} --device {params.device} "
            "--dtype {params.dtype} --threads {threads} --out {output}"
