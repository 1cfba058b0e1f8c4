"""peft methods: config builders with the paper's defaults, and LoRAMoE. The branch split that lets
one set of weights run as the frozen and the tuned model at once is `imsm.model.branches`."""
