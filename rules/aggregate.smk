# Aggregation into one xarray Dataset, the accuracy table, figures and report captions.


rule aggregate:
    input:
        comparisons=[comparison_path(RESULTS, *key) for key in COMPARISONS],
        metrics=[f"{m.dir(RESULTS)}/metrics.json" for m in STUDY.models],
        probes=[s.probe_path(RESULTS) for s in PROBED],
        autoattack=[f"{m.dir(RESULTS)}/autoattack.json" for m in AUTOATTACKED],
    output:
        zarr=directory(f"{RESULTS}/summary/similarity.zarr"),
        netcdf=f"{RESULTS}/summary/similarity.nc",
        accuracy=f"{RESULTS}/summary/accuracy.csv",
        findings=f"{RESULTS}/summary/findings.csv",
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
        summary=f"{RESULTS}/summary/similarity.nc",
    output:
        [
            report(
                figure_path(dataset, name, measure),
                caption=f"../report/{name}.rst",
                category="Figures",
                subcategory=f"{dataset} · {measure}",
            )
            for dataset, name, measure in DRAWN
        ],
    log:
        job_log("figures"),
    benchmark:
        job_benchmark("figures")
    conda:
        CONDA_ENV
    params:
        drawn=DRAWN,
    script:
        "../workflow_scripts/figures.py"
