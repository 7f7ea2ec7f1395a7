"""wa-controller: keeps every WhatsApp session pointed at the instance pod that holds it."""
