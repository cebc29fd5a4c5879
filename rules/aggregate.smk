# Aggregation into one xarray Dataset, the accuracy table, figures and report captions.


rule aggregate:
    input:
        comparisons=[comparison_path(RESULTS, *key) for key in COMPARISONS],
        metrics=[f"{m.dir(RESULTS)}/metrics.json" for m in STUDY.models],
        probes=[s.probe_path(RESULTS) for s in PROBED],
        autoattack=[f"{m.dir(RESULTS)}/autoattack.json" for m in AUTOATTACKED],
    output:
        zarr=directory(rplan.summary_path("similarity.zarr")),
        netcdf=rplan.summary_path("similarity.nc"),
        accuracy=rplan.summary_path("accuracy.csv"),
        findings=rplan.summary_path("findings.csv"),
    log:
        job_log("aggregate"),
    benchmark:
        job_benchmark("aggregate")
    conda:
        CONDA_ENV
    params:
        # What the results depend on, recorded in the summary (not device/threads/resources).
        settings=rcfg.study_settings(config),
        masking_gap=AUTOATTACK["masking_gap"],
    script:
        "../workflow_scripts/aggregate.py"


rule figures:
    input:
        summary=rplan.summary_path("similarity.nc"),
    output:
        # per figure, in the order of FIGURE_FORMATS: the PNG in the report, then its SVG and CSV
        [
            (
                report(
                    figure_path(dataset, name, measure, fmt),
                    caption=f"../report/{name}.rst",
                    category=f"Figures · {figure_group(name)}",
                    subcategory=f"{dataset} · {measure}",
                )
                if fmt == "png"
                else figure_path(dataset, name, measure, fmt)
            )
            for dataset, name, measure in DRAWN
            for fmt in rplan.FIGURE_FORMATS
        ],
    log:
        job_log("figures"),
    benchmark:
        job_benchmark("figures")
    conda:
        CONDA_ENV
    params:
        drawn=DRAWN,
        formats=rplan.FIGURE_FORMATS,
    script:
        "../workflow_scripts/figures.py"


# The report's pages beside the figures: findings and accuracy as tables, and provenance.
rule report_pages:
    input:
        summary=rplan.summary_path("similarity.nc"),
        accuracy=rplan.summary_path("accuracy.csv"),
        findings=rplan.summary_path("findings.csv"),
    output:
        **{
            name: report(
                rplan.report_page_path(name),
                caption=f"../report/{name}.rst",
                category=title,
            )
            for name, title in rplan.REPORT_PAGES.items()
        },
    log:
        job_log("report_pages"),
    benchmark:
        job_benchmark("report_pages")
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/report_pages.py"
