"""peft methods: config builders with the paper's defaults, and the branch split that lets one
set of weights run as the frozen and the tuned model at once."""
