# The tidy metrics and points tables, then the self-contained HTML report drawn from the points.
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
        points="reports/metrics/points.parquet",
        points_csv="reports/metrics/points.csv",
        weights="reports/metrics/weights.parquet",
        heatmaps="reports/metrics/heatmaps.parquet",
    params:
        level=cfg["evaluation"]["bootstrap"]["level"],
    log:
        "logs/aggregate_metrics.log",
    shell:
        "editharm --log {log} aggregate --out-dir reports/metrics --level {params.level} --weights {input.weights} "
        "--heatmaps {input.heatmaps} -- {input.metrics}"


rule build_report:
    input:
        points="reports/metrics/points.parquet",
        weights="reports/metrics/weights.parquet",
        heatmaps="reports/metrics/heatmaps.parquet",
    output:
        "reports/index.html",
    params:
        context=as_json(ehc.report_context(cfg)),
        level=cfg["evaluation"]["bootstrap"]["level"],
    log:
        "logs/build_report.log",
    shell:
        "editharm --log {log} build-report --points {input.points} --level {params.level} "
        "--weights {input.weights} --heatmaps {input.heatmaps} --context {params.context:q} --out {output}"
