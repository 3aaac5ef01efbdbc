//! The Stripe simulator (DESIGN §6).
