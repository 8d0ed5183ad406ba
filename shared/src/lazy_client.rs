//! AWS clients built on first use. Building any AWS SDK client loads the system's CA certificates (once per
//! process, hundreds of files), and a function's cold start should do only what every invocation needs
//! before its first poll: a batch that succeeds whole never calls SQS, DynamoDB or Secrets Manager.

use std::sync::{Arc, LazyLock};

/// A client built the first time it is dereferenced, shared by every clone.
pub type LazyClient<C> = Arc<LazyLock<C, Box<dyn FnOnce() -> C + Send>>>;

/// A client that `make` builds on first use.
pub fn lazy<C>(make: impl FnOnce() -> C + Send + 'static) -> LazyClient<C> {
    Arc::new(LazyLock::new(Box::new(make)))
}

/// A client built already (tests, tools).
pub fn ready<C: Send + 'static>(client: C) -> LazyClient<C> {
    lazy(move || client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn built_once_on_first_use_and_shared_by_clones() {
        static BUILT: AtomicUsize = AtomicUsize::new(0);
        let client = lazy(|| {
            BUILT.fetch_add(1, Ordering::SeqCst);
            String::from("client")
        });
        let clone = client.clone();
        assert_eq!(BUILT.load(Ordering::SeqCst), 0, "built before use");
        assert_eq!(clone.as_str(), "client");
        assert_eq!(client.len(), 6);
        assert_eq!(BUILT.load(Ordering::SeqCst), 1);
    }
}
