"""SupportChat: a support chat with a scripted customer, an order lookup and a transfer tool."""
