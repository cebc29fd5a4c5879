# Linear probes: a cross-validated linear classifier on each feature layer of a store.


rule probe:
    input:
        StoreKey(WILDCARD_MODEL, "{checkpoint}", "{inputs}").path(RESULTS),
    output:
        StoreKey(WILDCARD_MODEL, "{checkpoint}", "{inputs}").probe_path(RESULTS),
    log:
        job_log("probe", f"{MODEL_ID}/{{checkpoint}}/{{inputs}}"),
    benchmark:
        job_benchmark("probe", f"{MODEL_ID}/{{checkpoint}}/{{inputs}}")
    conda:
        CONDA_ENV
    threads: SIZER.threads("probe")
    resources:
        mem_mb=resource("probe", "mem_mb"),
        runtime=resource("probe", "runtime"),
    params:
        folds=config["probes"]["folds"],
        seed=config["probes"]["seed"],
        n_examples=lambda wc: SIZER.probe_examples(wc.dataset),
    script:
        "../workflow_scripts/probe.py"
