"""Sending PINs by SMS: GSM modem, HTTP gateway, e-mail-to-SMS."""
