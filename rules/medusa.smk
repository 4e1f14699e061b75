# Medusa heads: K heads on each target's final-norm features, trained with DeepSpeed on
# that target's EAGLE data shards. {target} is `dense` (the base), `dllm` (SpaDec's D-LLM)
# or `dllm_baseline`.


rule train_medusa:
    input:
        cfg="results/{model}/config/medusa.train.json",
        target=target_dir,
        shards=eagle_shards,
    output:
        directory("results/{model}/medusa/{target}/heads"),
    log:
        "logs/{model}/train_medusa_{target}.log",
    benchmark:
        "logs/{model}/train_medusa_{target}.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 8
    resources:
        gpu=lambda wc: stage_settings(wc.model, "medusa")["train_gpus"],
        mem_mb=64000,
        runtime=lambda wc, attempt: 600 * attempt,
    params:
        script=script("train_medusa"),
        ckpt="ckpt/{model}/medusa/{target}/heads",
    shell:
        "$SPADEC_PY -m spadec.launch --gpus {resources.gpu} --backend deepspeed --"
        " {params.script} --config {input.cfg} --target {input.target} --data {input.shards}"
        " --ckpt {params.ckpt} --out {output} > {log} 2>&1"
