"""
The admin console's domain: roles and their rights (L{secmail.admin.roles}), and admins'
sign-in, sessions and API tokens (L{secmail.admin.accounts}). The web pages and the API
(L{secmail.web.admin}) and the C{secmail admin} command (L{secmail.cli_admin}) call these;
the SQL lives in L{secmail.store.admins}.
"""
