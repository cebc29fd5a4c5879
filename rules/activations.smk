# Activation extraction: one Zarr store per model x checkpoint x input kind.


rule extract:
    input:
        unpack(extract_inputs),
    output:
        directory(StoreKey(WILDCARD_MODEL, "{checkpoint}", "{inputs}").path(RESULTS)),
    log:
        job_log("extract", f"{MODEL_ID}/{{checkpoint}}/{{inputs}}"),
    benchmark:
        job_benchmark("extract", f"{MODEL_ID}/{{checkpoint}}/{{inputs}}")
    conda:
        CONDA_ENV
    threads: SIZER.threads("extract")
    resources:
        mem_mb=resource("extract", "mem_mb"),
        runtime=resource("extract", "runtime"),
        disk_mb=resource("extract", "disk_mb"),
        gpu=SIZER.gpus("extract"),
    params:
        layers=ACT["layers"],
        features=FEATURES,
        n_examples=lambda wc: EXAMPLES[wc.dataset],
        passes=ACT["passes"],
        compat=ACT["compat"],
        subset_seed=config["split_seed"],
        layout=STORE_LAYOUT,
    script:
        "../workflow_scripts/extract.py"
