# One sequential pass per configuration; the accumulated dW is saved at every evaluation step.


rule apply_edits:
    input:
        model="data/models/{model}",
        sequence="data/sequences/{setting}/seq{seq}.parquet",
        stats=get_stats,
    output:
        expand("data/edits/{{model}}/{{method}}/{{reg}}/{{setting}}/seq{{seq}}/step-{step}.safetensors", step=STEPS),
    params:
        method=get_method,
        reg=get_regularizer,
        steps=",".join(map(str, STEPS)),
        seed=lambda w: cfg["seed"] + int(w.seq),
        out_dir=lambda w: f"data/edits/{config_dir(w)}",
        device=cfg["device"],
        dtype=cfg["dtype"],
    threads: cfg["threads"]
    log:
        "logs/apply_edits/{model}/{method}/{reg}/{setting}/seq{seq}.log",
    benchmark:
        "benchmarks/apply_edits/{model}/{method}/{reg}/{setting}/seq{seq}.tsv"
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=GPU,
    shell:
        "editharm --log {log} apply-edits --model {input.model} --sequence {input.sequence} "
        "--method {params.method:q} --reg {params.reg:q} --steps {params.steps} --stats {input.stats} "
        "--seed {params.seed} --device {params.device} --dtype {params.dtype} --threads {threads} "
        "--out-dir {params.out_dir}"
