//! Kairos patch (vendor/README.md, item 11): the dispatcher's timers are lazy.
//!
//! Upstream, a timer was a `Pin<Box<Sleep>>` made anew each time it was set and dropped each
//! time it was cleared: on a keep-alive connection the keep-alive timer was set after every
//! response and cleared when the next request arrived, so every request allocated a `Sleep`,
//! registered it in tokio's timer wheel and took it out again (about 530 instructions per
//! request in callgrind, and an allocation).
//!
//! Here a timer keeps one `Sleep` for the connection's life and a deadline of its own. Setting
//! it to a later deadline than the `Sleep` is armed for costs nothing: when the `Sleep` fires
//! early, [`TimerState::poll_expired`] moves it to the timer's deadline (one wheel operation
//! per timeout period, not two per request). Clearing it only forgets the deadline; the
//! `Sleep` left armed may wake the connection once, for nothing. Only a deadline earlier than
//! the armed one moves the `Sleep` at once.

use std::{fmt, future::Future, pin::Pin, task::Context, time::Instant};

use tokio::time::{sleep_until, Sleep};
use tracing::trace;

#[derive(Debug)]
pub(super) struct TimerState {
    enabled: bool,
    /// When the timer expires; `None` while it is not set.
    deadline: Option<Instant>,
    /// Armed for `deadline` or earlier while the timer is set; kept while it is not.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl TimerState {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            deadline: None,
            sleep: None,
        }
    }

    /// Whether the connection's configuration uses this timer at all.
    pub(super) fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the timer is set (running towards its deadline).
    pub(super) fn is_active(&self) -> bool {
        self.deadline.is_some()
    }

    /// Sets the timer to expire at `deadline` and registers the task's waker.
    pub(super) fn set_and_init(&mut self, cx: &mut Context<'_>, deadline: Instant, line: u32) {
        if !self.enabled {
            trace!("setting disabled timer from line {}", line);
        }
        self.deadline = Some(deadline);
        match &mut self.sleep {
            // Armed for the same deadline or an earlier one: it fires then and is moved on.
            Some(sleep) if sleep.deadline().into_std() <= deadline => {}
            Some(sleep) => sleep.as_mut().reset(deadline.into()),
            None => self.sleep = Some(Box::pin(sleep_until(deadline.into()))),
        }
        let _ = self.poll_expired(cx);
    }

    /// Stops the timer. Its `Sleep` stays armed (see the module's doc).
    pub(super) fn clear(&mut self, line: u32) {
        if !self.enabled {
            trace!("trying to clear a disabled timer from line {}", line);
        }
        if self.deadline.is_none() {
            trace!("trying to clear an inactive timer from line {}", line);
        }
        self.deadline = None;
    }

    /// Whether the timer is set and its deadline has passed. Registers the task's waker for
    /// the deadline otherwise (a set timer); a `Sleep` that fired before the deadline is moved
    /// to it.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(deadline), Some(sleep)) = (self.deadline, self.sleep.as_mut()) else {
            return false;
        };
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if sleep.deadline().into_std() >= deadline {
                return true;
            }
            sleep.as_mut().reset(deadline.into());
        }
    }
}

impl fmt::Display for TimerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.enabled, self.deadline) {
            (false, _) => f.write_str("timer is disabled"),
            (true, None) => f.write_str("timer is inactive"),
            (true, Some(deadline)) => {
                let now = Instant::now();
                if deadline < now {
                    f.write_str("timer is active and has reached deadline")
                } else {
                    write!(
                        f,
                        "timer is active and due to expire in {} milliseconds",
                        ((deadline - now).as_secs_f32() * 1000.0)
                    )
                }
            }
        }
    }
}
