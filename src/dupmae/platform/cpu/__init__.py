"""CPU speed paths: oneDNN linears for inference, fast dropout masks, lean attention, the allocator."""
