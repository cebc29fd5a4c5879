# Aggregation into one xarray Dataset, the accuracy table, figures and report captions.


rule aggregate:
    input:
        comparisons=[comparison_path(*key) for key in COMPARISONS],
        metrics=[f"{model_dir(**m)}/metrics.json" for m in all_models()],
    output:
        zarr=directory(f"{RESULTS}/summary/similarity.zarr"),
        netcdf=f"{RESULTS}/summary/similarity.nc",
        accuracy=f"{RESULTS}/summary/accuracy.csv",
    log:
        f"{RESULTS}/logs/aggregate.log",
    params:
        model_ids=[MODEL_ID.format(**m) for m in all_models()],
        methods=METHODS,
        config=config,
    script:
        "../workflow_scripts/aggregate.py"


FIGURES = {
    "cross_layer_heatmaps": "cross_layer_heatmaps.rst",
    "block_score_vs_eps": "block_score_vs_eps.rst",
    "robust_vs_standard_diagonal": "robust_vs_standard_diagonal.rst",
    "benign_vs_adversarial_diagonal": "benign_vs_adversarial_diagonal.rst",
    "epochs_heatmaps": "epochs_heatmaps.rst",
    "accuracy_vs_eps": "accuracy_vs_eps.rst",
}


rule figures:
    input:
        summary=f"{RESULTS}/summary/similarity.nc",
    output:
        **{
            name: report(
                f"{RESULTS}/figures/{name}.png",
                caption=f"../report/{caption}",
                category="Figures",
            )
            for name, caption in FIGURES.items()
        },
    log:
        f"{RESULTS}/logs/figures.log",
    script:
        "../workflow_scripts/figures.py"
