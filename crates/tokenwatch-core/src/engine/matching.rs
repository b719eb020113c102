//! `match`: fires on every event that passes the rule's `where` (subject to the cooldown).
//!
//! No window, so no state but the key's cooldown; events later than the allowed lateness
//! are seen too, since a late event cannot corrupt anything here.

use serde_json::{json, Value};

use super::state::{Env, KindStep, View};
use super::{said, Fired};
use crate::decision::clip_text;
use crate::rules::{Ctx, Rule};

/// A `match` rule has no parameters.
pub struct Matching;

impl KindStep for Matching {
    type Data = ();
    type Input<'e> = ();
    type Hit<'s> = ();
    const SEES_LATE: bool = true;

    fn input<'e>(&self, _: &'e Ctx<'e>, _: &mut Env<'_>) -> Option<()> {
        Some(())
    }

    fn step(&self, (): &mut (), _: i64, (): ()) -> Option<()> {
        Some(())
    }

    fn fired(&self, rule: &Rule, cx: &Ctx<'_>, (): ()) -> Fired {
        Fired {
            reason: format!("{}.", said(rule)),
            evidence: evidence(cx),
            not_before_ms: None,
        }
    }

    fn view(&self, _: Option<&()>, _: &Ctx<'_>) -> View {
        View {
            window: Vec::new(),
            progress: None,
            why_not: "the rule's condition does not hold".into(),
        }
    }
}

/// What the request and its token looked like, without the token.
fn evidence(cx: &Ctx<'_>) -> Value {
    let ev = cx.ev;
    let tok = ev.token.as_deref();
    let mut e = json!({
        "status": ev.status,
        "method": clip_text(&crate::token::redact_jwts(&ev.method)),
    });
    // The path without its query, JWTs redacted: it may carry the very token this is about.
    // (Parsing already cleans it; an event built elsewhere must not leak either.) Both are
    // clipped: a line may be a MiB long, a decision may not.
    e["path"] = json!(clip_text(&crate::token::clean_path(&ev.path)));
    if let Some(t) = tok {
        e["alg"] = json!(t.alg.as_deref());
        e["iat"] = json!(t.iat);
        e["exp"] = json!(t.exp);
        if cx.expired {
            e["expired_for_s"] = json!(t.exp.map(|x| ev.ts_ms.div_euclid(1000).saturating_sub(x)));
        }
        if let Some(l) = t.lifetime() {
            e["lifetime_s"] = json!(l);
        }
        if t.unsigned {
            e["unsigned"] = json!(true);
        }
    }
    if ev.token_in_url {
        e["token_in_url"] = json!(true);
    }
    super::posture::evidence(cx, &mut e);
    e
}
