"""Rule export_finetuned: the ONNX export of a fine-tuned model."""

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    from xmmsr.learn.checkpoint import load_model
    from xmmsr.learn.predict import export_onnx

    export_onnx(load_model(sm.input[0]), sm.output[0])
    print(f"{sm.output[0]}: exported")
