"""
The admin console and its JSON API: a Klein app of its own, served only on C{[admin] listen}
(L{secmail.tap} builds it; the portal's app has none of its routes). Pages and API endpoints
say what they need with one decorator (L{secmail.web.admin.access.guarded}); the rights
come from L{secmail.admin.roles}, the accounts from L{secmail.admin.accounts}.
"""
