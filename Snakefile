# editharm: does editing facts into an LLM hurt its general abilities, and which regularizer prevents that?
# This file only wires the phases together; every value comes from params.yaml (validated at load).
from snakemake.utils import min_version

min_version("9.0")


# `--configfile <preset>` replaces params.yaml instead of being merged into it.
if not workflow.overwrite_configfiles:
    from editharm.config.load import read_params

    read_params("params.yaml")  # a syntax error or a key written twice, named by line and column

    configfile: "params.yaml"


include: "rules/common.smk"
include: "rules/fetch.smk"
include: "rules/sequences.smk"
include: "rules/stats.smk"
include: "rules/edit.smk"
include: "rules/evaluate.smk"
include: "rules/lmeval.smk"
include: "rules/report.smk"


rule all:
    input:
        "reports/index.html",
        "reports/metrics/summary.json",
