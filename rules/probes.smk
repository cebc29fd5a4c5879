# Linear probes: a cross-validated linear classifier on each feature layer of a store.


rule probe:
    input:
        StoreKey(WILDCARD_MODEL, "{checkpoint}", "{inputs}").path(RESULTS),
    output:
        StoreKey(WILDCARD_MODEL, "{checkpoint}", "{inputs}").probe_path(RESULTS),
    log:
        f"{RESULTS}/logs/probe/{MODEL_ID}/{{checkpoint}}/{{inputs}}.log",
    threads: config["threads"]["similarity"]
    resources:
        mem_mb=probe_resource("mem_mb"),
        runtime=probe_resource("runtime"),
    params:
        folds=config["probes"]["folds"],
        seed=config["probes"]["seed"],
        n_examples=probe_examples,
    script:
        "../workflow_scripts/probe.py"
