//! `tally token …`: what the CLI prints; the use cases are `crate::tokens`.

use crate::tokens::TokenView;

/// The table `tally token list` prints.
pub fn render_table(tokens: &[TokenView]) -> String {
    let mut out = format!(
        "{:>5}  {:<20} {:<7} {:<16} {:<13} {:<8} {:<24} {:<24} {:<24}\n",
        "ID", "NAME", "ROLE", "TENANT", "TOKEN", "STATUS", "CREATED", "LAST USED", "EXPIRES"
    );
    for token in tokens {
        out.push_str(&format!(
            "{:>5}  {:<20} {:<7} {:<16} {:<13} {:<8} {:<24} {:<24} {:<24}\n",
            token.id,
            token.name.as_deref().unwrap_or("-"),
            token.role,
            token.tenant.as_deref().unwrap_or("*"),
            token.prefix,
            token.status,
            token.created_at,
            token.last_used_at.as_deref().unwrap_or("-"),
            token.expires_at.as_deref().unwrap_or("never"),
        ));
    }
    out
}
