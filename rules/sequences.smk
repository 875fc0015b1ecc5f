# Seeded edit sequences, shared by every setting, method and regularizer; drawn from one editing dataset,
# or from several by share (one folder per --dataset NAME=SHARE, in the same order).
localrules: make_sequence


rule make_sequence:
    input:
        records=SEQUENCE_RECORDS,
    output:
        "data/sequences/seq{seq}.parquet",
    params:
        dataset=ehc.sequence_dataset_arg(cfg),
        n_edits=cfg["sequences"]["n_edits"],
        seed=get_seed,
    log:
        "logs/make_sequence/seq{seq}.log",
    shell:
        "editharm --log {log} make-sequence --records {input.records} --dataset {params.dataset} --n-edits {params.n_edits} "
        "--seed {params.seed} --out {output}"
