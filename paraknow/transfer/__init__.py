"""The transfer layer: sensitivity, layer mapping, selection (paraknow.extract), LoRA factors, export
and verification, and the pipeline that composes them (paraknow.transfer.pipeline). Imports only the core."""
