"""An agent loop: model and tool calls as durable steps, a 24 h human approval as a durable wait."""
