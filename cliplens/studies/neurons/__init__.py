"""Study 003: second-order effects of neurons and neuron-head pairs.

* :mod:`.pairs` -- CLIP ResNets: the image embedding as one term per (attention-pool head,
  channel of the last feature map), each a scalar per image times a fixed direction;
* :mod:`.second_order` -- ViT MLP neurons carried to the output through later attention heads
  (the published variant and the exact one);
* :mod:`.components` -- per neuron or pair: mean, norms, top-k images and first principal
  component, out of core or streamed;
* :mod:`.sparse` -- each component as a sparse combination of text embeddings (OMP).
"""
