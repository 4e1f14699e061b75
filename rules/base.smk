# prepare_base: the base model as a standard HF directory (+ metrics.json, run_info.json).


rule prepare_base:
    input:
        cfg="results/{model}/config/base.json",
        data="results/{model}/data",
    output:
        directory("results/{model}/base"),
    log:
        "logs/{model}/prepare_base.log",
    benchmark:
        "logs/{model}/prepare_base.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 8
    resources:
        gpu=stage_gpus("base"),
        mem_mb=16000,
        runtime=lambda wc, attempt: 120 * attempt,
    params:
        script=script("prepare_base"),
        ckpt="ckpt/{model}/base",
    shell:
        "$SPADEC_PY -m spadec.launch --gpus {resources.gpu} --"
        " {params.script} --config {input.cfg} --data {input.data}"
        " --ckpt {params.ckpt} --out {output} > {log} 2>&1"
