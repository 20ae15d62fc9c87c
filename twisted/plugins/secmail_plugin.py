from twisted.application.service import ServiceMaker

secmail = ServiceMaker(
    "secmail",
    "secmail.tap",
    "Secure e-mail gateway: ESMTP relay, encrypted store, HTTPS portal, SMS PINs.",
    "secmail",
)
