//! A lookup thread per database backend, so that a slow or stuck database never stalls the
//! thread that drains the ring buffer for more than `ownership.lookup_timeout_ms`.
//!
//! The caller waits for the answer at most the timeout. When it gives up, the lookup thread is
//! still busy with that query: until it answers, further lookups fail at once (`timeout`)
//! instead of queueing behind it. A database that hangs thus costs one timeout, not one per
//! document read.
use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use super::{
    fact::{Answer, LookupError},
    sql::{Lookup, ProbeError},
};

enum Request {
    Lookup {
        id: u64,
        key: String,
        deadline: Instant,
    },
    Probe {
        id: u64,
    },
}

enum Reply {
    Answer(Answer),
    Probe(Result<(), ProbeError>),
}

struct Channel {
    requests: mpsc::Sender<Request>,
    replies: mpsc::Receiver<(u64, Reply)>,
}

/// The caller's side of a lookup thread. The thread starts at the first request (after the
/// privilege drop, which needs a single-threaded process) and ends when this is dropped and
/// its current query returns.
pub struct Worker {
    name: String,
    timeout: Duration,
    lookup: Option<Box<dyn Lookup>>,
    channel: Option<Channel>,
    /// A request the caller gave up on, still being served.
    outstanding: Option<u64>,
    next_id: u64,
}

impl Worker {
    pub fn new(name: &str, lookup: Box<dyn Lookup>, timeout: Duration) -> Self {
        Self {
            name: format!("vigie-{name}"),
            timeout,
            lookup: Some(lookup),
            channel: None,
            outstanding: None,
            next_id: 1,
        }
    }

    fn channel(&mut self) -> Option<&Channel> {
        if self.channel.is_none() {
            let mut lookup = self.lookup.take()?;
            let (requests, inbox) = mpsc::channel::<Request>();
            let (outbox, replies) = mpsc::channel();
            let name = self.name.clone();
            let spawned = thread::Builder::new()
                .name(self.name.clone())
                .spawn(move || {
                    for request in inbox {
                        let (id, reply, late) = match request {
                            Request::Lookup { id, key, deadline } => {
                                let answer = lookup.lookup(&key, deadline);
                                let late = Instant::now().saturating_duration_since(deadline);
                                (id, Reply::Answer(answer), late)
                            }
                            Request::Probe { id } => {
                                (id, Reply::Probe(lookup.probe()), Duration::ZERO)
                            }
                        };
                        if outbox.send((id, reply)).is_err() {
                            return;
                        }
                        // After the reply is sent: whoever reads this can rely on lookups
                        // working again.
                        if !late.is_zero() {
                            // Its caller gave up; lookups failed fast meanwhile.
                            tracing::warn!(
                                "{name}: a lookup answered {} ms after its deadline; lookups work again",
                                late.as_millis()
                            );
                        }
                    }
                });
            match spawned {
                Ok(_) => self.channel = Some(Channel { requests, replies }),
                Err(e) => tracing::warn!("cannot start the {} lookup thread: {e}", self.name),
            }
        }
        self.channel.as_ref()
    }

    /// Sends a request and waits for its reply at most `wait`. `None`: no reply in time (or
    /// no thread).
    fn call(&mut self, make: impl FnOnce(u64) -> Request, wait: Duration) -> Option<Reply> {
        let id = self.next_id;
        self.next_id += 1;
        let outstanding = &mut self.outstanding;
        // Late replies to requests given up on: the thread is free again.
        if let Some(channel) = self.channel.as_ref() {
            while let Ok((late, _)) = channel.replies.try_recv() {
                if *outstanding == Some(late) {
                    *outstanding = None;
                }
            }
        }
        if self.outstanding.is_some() {
            return None;
        }
        let channel = self.channel()?;
        channel.requests.send(make(id)).ok()?;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match channel.replies.recv_timeout(left) {
                Ok((got, reply)) if got == id => return Some(reply),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.outstanding = Some(id);
                    return None;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The thread is gone (it panicked): no more answers from it.
                    self.channel = None;
                    return None;
                }
            }
        }
    }

    /// The answer for `key`, within the timeout.
    pub fn ask(&mut self, key: &str) -> Answer {
        if self.channel.is_none() && self.lookup.is_none() {
            return Answer::Failed(LookupError::Unavailable);
        }
        let deadline = Instant::now() + self.timeout;
        let key = key.to_owned();
        let timeout = self.timeout;
        match self.call(|id| Request::Lookup { id, key, deadline }, timeout) {
            Some(Reply::Answer(answer)) => answer,
            Some(Reply::Probe(_)) => Answer::Failed(LookupError::Unavailable),
            None if self.channel.is_none() => Answer::Failed(LookupError::Unavailable),
            None => Answer::Failed(LookupError::Timeout),
        }
    }

    /// Checks the database and query, waiting at most `wait` (start-up).
    pub fn probe(&mut self, wait: Duration) -> Result<(), ProbeError> {
        match self.call(|id| Request::Probe { id }, wait) {
            Some(Reply::Probe(result)) => result,
            _ => Err(ProbeError::Unavailable(format!(
                "no answer within {} ms",
                wait.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Answers after `delay`, counting the lookups it served.
    struct Slow {
        delay: Duration,
        served: Arc<Mutex<Vec<String>>>,
    }

    impl Lookup for Slow {
        fn probe(&mut self) -> Result<(), ProbeError> {
            Ok(())
        }

        fn lookup(&mut self, key: &str, _deadline: Instant) -> Answer {
            thread::sleep(self.delay);
            self.served.lock().unwrap().push(key.to_owned());
            Answer::Owner {
                owner: "bob".into(),
                shared_with: vec![],
                matched: None,
            }
        }
    }

    #[test]
    fn a_stuck_backend_costs_one_timeout_then_fails_fast_until_it_answers() {
        let served = Arc::new(Mutex::new(Vec::new()));
        let slow = Slow {
            delay: Duration::from_millis(300),
            served: served.clone(),
        };
        let mut w = Worker::new("test", Box::new(slow), Duration::from_millis(50));
        // The caller gives up at the timeout (waiting would have given bob).
        let started = Instant::now();
        assert_eq!(w.ask("1"), Answer::Failed(LookupError::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(50));
        // Still busy with "1": fails at once, even with a long timeout, without queueing (a
        // queued "2" would have been answered).
        w.timeout = Duration::from_secs(2);
        let started = Instant::now();
        assert_eq!(w.ask("2"), Answer::Failed(LookupError::Timeout));
        assert!(started.elapsed() < Duration::from_millis(250));
        // Once the late answer is in, lookups work again: poll (each poll fails fast while the
        // backend is busy) until one is served, within a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match w.ask("4") {
                Answer::Owner { .. } => break,
                other => {
                    assert_eq!(other, Answer::Failed(LookupError::Timeout));
                    assert!(
                        Instant::now() < deadline,
                        "the backend never answered again"
                    );
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        assert_eq!(*served.lock().unwrap(), ["1", "4"]);
        assert_eq!(w.probe(Duration::from_secs(1)), Ok(()));
    }

    struct Panics;

    impl Lookup for Panics {
        fn probe(&mut self) -> Result<(), ProbeError> {
            Ok(())
        }

        fn lookup(&mut self, _key: &str, _deadline: Instant) -> Answer {
            panic!("backend bug");
        }
    }

    #[test]
    fn a_backend_that_panics_is_unavailable_not_fatal() {
        let mut w = Worker::new("panics", Box::new(Panics), Duration::from_secs(2));
        assert_eq!(w.ask("1"), Answer::Failed(LookupError::Unavailable));
        assert_eq!(w.ask("2"), Answer::Failed(LookupError::Unavailable));
    }
}
