# Seeded edit sequences, shared by every setting, method and regularizer.
localrules: make_sequence


rule make_sequence:
    input:
        records=f"data/datasets/{cfg['sequences']['dataset']}",
    output:
        "data/sequences/seq{seq}.parquet",
    params:
        dataset=cfg["sequences"]["dataset"],
        n_edits=cfg["sequences"]["n_edits"],
        seed=get_seed,
    log:
        "logs/make_sequence/seq{seq}.log",
    shell:
        "editharm --log {log} make-sequence --records {input.records} --dataset {params.dataset} --n-edits {params.n_edits} "
        "--seed {params.seed} --out {output}"
