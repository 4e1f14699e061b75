# Evaluation: every method side by side per model and benchmark, then the paper's tables,
# figures and the HTML report (`snakemake --report`), computed from the records alone.


rule eval_speed:
    input:
        unpack(eval_speed_inputs),
        speed="results/{model}/config/eval.speed.json",
        decode="results/{model}/config/eagle.decode.json",
        ats="results/{model}/config/predictor.decode.json",
        medusa="results/{model}/config/medusa.decode.json",
    output:
        directory("results/{model}/eval/{bench}"),
    log:
        "logs/{model}/eval_speed_{bench}.log",
    benchmark:
        "logs/{model}/eval_speed_{bench}.benchmark.tsv"
    conda:
        "../environment.yml"
    # All cores: no other job may run beside the timed methods (on SLURM the profile asks
    # for an exclusive node).
    threads: lambda wc: workflow.cores
    resources:
        gpu=stage_gpus("eval"),
        mem_mb=32000,
        runtime=lambda wc, attempt: 240 * attempt,
    params:
        script=script("eval_speed"),
        models=lambda wc, input: model_options(input),
    shell:
        "$SPADEC_PY -m spadec.launch --gpus {resources.gpu} --"
        " {params.script} --model {wildcards.model} --bench {wildcards.bench}"
        " --speed {input.speed} --decode {input.decode} --ats {input.ats}"
        " --medusa {input.medusa} {params.models} --data {input.data}"
        " --out {output} > {log} 2>&1"


rule tables:
    input:
        cfg=expand("results/{model}/config/eval.tables.json", model=MODELS),
        evals=eval_dirs,
    output:
        speedup_csv="results/tables/speedup.csv",
        speedup_md=report(
            "results/tables/speedup.md",
            caption="../report/speedup.rst",
            category="Tables",
        ),
        speedup_tex="results/tables/speedup.tex",
        quality_csv="results/tables/quality.csv",
        quality_md=report(
            "results/tables/quality.md",
            caption="../report/quality.rst",
            category="Tables",
        ),
        quality_tex="results/tables/quality.tex",
        responses=report(
            "results/tables/responses.md",
            caption="../report/responses.rst",
            category="Tables",
        ),
        ablation_csv="results/tables/ablation.csv",
        ablation_md=report(
            "results/tables/ablation.md",
            caption="../report/ablation.rst",
            category="Tables",
        ),
        speedup_png=report(
            "results/figures/speedup.png",
            caption="../report/speedup.rst",
            category="Figures",
        ),
        quality_png=report(
            "results/figures/quality.png",
            caption="../report/quality.rst",
            category="Figures",
        ),
        layers_png=report(
            "results/figures/layer_load.png",
            caption="../report/layer_load.rst",
            category="Figures",
        ),
        run_info="results/tables/run_info.json",
    log:
        "logs/tables.log",
    # A few seconds of pandas and matplotlib over small files: on a cluster it runs where
    # Snakemake runs, instead of waiting in the queue.
    localrule: True
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        script=script("tables"),
        tables=lambda wc, output: os.path.dirname(output.speedup_csv),
        figures=lambda wc, output: os.path.dirname(output.speedup_png),
    shell:
        "$SPADEC_PY {params.script} --config {input.cfg} --evals {input.evals}"
        " --tables {params.tables} --figures {params.figures} > {log} 2>&1"
