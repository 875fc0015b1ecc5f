# One tidy metrics table, then the self-contained HTML report.
localrules: aggregate_metrics, build_report


rule aggregate_metrics:
    input:
        get_all_metrics,
    output:
        table="reports/metrics/metrics.parquet",
        csv="reports/metrics/metrics.csv",
        summary="reports/metrics/summary.json",
    log:
        "logs/aggregate_metrics.log",
    shell:
        "editharm --log {log} aggregate --out-dir reports/metrics {input}"


rule build_report:
    input:
        table="reports/metrics/metrics.parquet",
    output:
        "reports/index.html",
    params:
        context=as_json(ehc.report_context(cfg)),
    log:
        "logs/build_report.log",
    shell:
        "editharm --log {log} build-report --table {input.table} --context {params.context:q} --out {output}"
