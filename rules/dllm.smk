# D-LLM: LoRA + router finetune, LoRA merge, final HF directory, evaluation vs dense.
# {dllm} is `dllm` (SpaDec's target, multi-token robust routers) or `dllm_baseline` (the
# D-LLM and Eagle2+D-LLM bars' target, trained when its router input differs).


rule finetune_dllm:
    input:
        cfg="results/{model}/config/{dllm}.json",
        base="results/{model}/base",
        data="results/{model}/data",
    output:
        directory("results/{model}/{dllm}/adapter"),
    log:
        "logs/{model}/finetune_{dllm}.log",
    benchmark:
        "logs/{model}/finetune_{dllm}.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 8
    resources:
        gpu=stage_gpus("dllm"),
        mem_mb=32000,
        runtime=lambda wc, attempt: 240 * attempt,
    params:
        script=script("finetune_dllm"),
        ckpt="ckpt/{model}/{dllm}",
    shell:
        "$SPADEC_PY -m spadec.launch --gpus {resources.gpu} --"
        " {params.script} --config {input.cfg} --base {input.base} --data {input.data}"
        " --ckpt {params.ckpt} --out {output} > {log} 2>&1"


rule merge_lora:
    input:
        cfg="results/{model}/config/{dllm}.json",
        base="results/{model}/base",
        adapter="results/{model}/{dllm}/adapter",
    output:
        temp(directory("results/{model}/{dllm}/merged")),
    log:
        "logs/{model}/merge_lora_{dllm}.log",
    benchmark:
        "logs/{model}/merge_lora_{dllm}.benchmark.tsv"
    conda:
        "../environment.yml"
    resources:
        mem_mb=32000,
        runtime=60,
    params:
        script=script("merge_lora"),
    shell:
        "$SPADEC_PY {params.script} --config {input.cfg} --base {input.base}"
        " --adapter {input.adapter} --out {output} > {log} 2>&1"


rule convert_hf:
    input:
        cfg="results/{model}/config/{dllm}.json",
        merged="results/{model}/{dllm}/merged",
    output:
        directory("results/{model}/{dllm}/hf"),
    log:
        "logs/{model}/convert_hf_{dllm}.log",
    benchmark:
        "logs/{model}/convert_hf_{dllm}.benchmark.tsv"
    conda:
        "../environment.yml"
    resources:
        mem_mb=32000,
        runtime=60,
    params:
        script=script("convert_hf"),
    shell:
        "$SPADEC_PY {params.script} --config {input.cfg} --merged {input.merged}"
        " --out {output} > {log} 2>&1"


rule eval_dllm:
    input:
        cfg="results/{model}/config/{dllm}.json",
        base="results/{model}/base",
        dllm="results/{model}/{dllm}/hf",
        data="results/{model}/data",
    output:
        metrics="results/{model}/{dllm}/metrics.json",
        routing=report(
            "results/{model}/{dllm}/routing.png",
            caption="../report/routing.rst",
            category="D-LLM routing",
            labels={"model": "{model}", "D-LLM": "{dllm}"},
        ),
    log:
        "logs/{model}/eval_{dllm}.log",
    benchmark:
        "logs/{model}/eval_{dllm}.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 8
    resources:
        gpu=stage_gpus("dllm"),
        mem_mb=32000,
        runtime=120,
    params:
        script=script("eval_dllm"),
    shell:
        "$SPADEC_PY {params.script} --config {input.cfg} --base {input.base}"
        " --dllm {input.dllm} --data {input.data} --out {output.metrics}"
        " --figure {output.routing} > {log} 2>&1"
