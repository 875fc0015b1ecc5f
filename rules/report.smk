# One tidy metrics table, then the self-contained HTML report.
localrules: aggregate_metrics, build_report


rule aggregate_metrics:
    input:
        metrics=get_all_metrics,
        weights=get_all_weights("weights"),
        heatmaps=get_all_weights("heatmap"),
    output:
        table="reports/metrics/metrics.parquet",
        csv="reports/metrics/metrics.csv",
        summary="reports/metrics/summary.json",
        weights="reports/metrics/weights.parquet",
        heatmaps="reports/metrics/heatmaps.parquet",
    log:
        "logs/aggregate_metrics.log",
    shell:
        "editharm --log {log} aggregate --out-dir reports/metrics --weights {input.weights} "
        "--heatmaps {input.heatmaps} -- {input.metrics}"


rule build_report:
    input:
        table="reports/metrics/metrics.parquet",
        weights="reports/metrics/weights.parquet",
        heatmaps="reports/metrics/heatmaps.parquet",
    output:
        "reports/index.html",
    params:
        context=as_json(ehc.report_context(cfg)),
    log:
        "logs/build_report.log",
    shell:
        "editharm --log {log} build-report --table {input.table} --weights {input.weights} "
        "--heatmaps {input.heatmaps} --context {params.context:q} --out {output}"
