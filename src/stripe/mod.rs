//! The outbound Stripe client (DESIGN §1, §5).
