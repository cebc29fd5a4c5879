# Similarity: every comparison an analysis asks for, one small netCDF each.


rule similarity:
    input:
        unpack(comparison_stores),
    output:
        comparison_path(RESULTS, "{analysis}", "{dataset}", "{pair}"),
    log:
        job_log("similarity", "{analysis}/{dataset}/{pair}"),
    benchmark:
        job_benchmark("similarity", "{analysis}/{dataset}/{pair}")
    conda:
        CONDA_ENV
    threads: SIZER.threads("similarity")
    resources:
        mem_mb=resource("similarity", "mem_mb"),
        runtime=resource("similarity", "runtime"),
        gpu=SIZER.gpus("similarity"),
    params:
        metrics=SIM["metrics"],
        intervals=SIM["intervals"],
        seed=SIM["seed"],
        rbf_sigma=SIM["rbf_sigma"],
        knn_k=SIM["knn_k"],
        svcca_variance=SIM["svcca_variance"],
        permutations=SIM["permutations"],
        by_class=lambda wc: ANALYSES[wc.analysis].by_class,
    script:
        "../workflow_scripts/similarity.py"
