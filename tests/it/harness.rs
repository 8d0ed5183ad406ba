//! The harness itself: a test that panics leaves neither its database nor its queues behind.

use integration_tests::TestStack;

#[tokio::test]
async fn a_test_that_panics_before_its_cleanup_leaves_nothing_behind() {
    let observer = TestStack::start().await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let stack = TestStack::start().await.unwrap();
        let _ = tx.send((
            stack.name.clone(),
            stack.db_name.clone(),
            stack.provisioned.urls.clone(),
        ));
        panic!("a failing test");
    });
    assert!(failing.await.unwrap_err().is_panic());
    let (name, db_name, urls) = rx.await.unwrap();
    assert!(!urls.is_empty());

    let databases: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&db_name)
        .fetch_one(&observer.pool)
        .await
        .unwrap();
    assert_eq!(databases, 0, "{db_name} is still there");
    let listed = observer
        .sqs
        .list_queues()
        .queue_name_prefix(&name)
        .send()
        .await
        .unwrap();
    let left: Vec<_> = listed
        .queue_urls()
        .iter()
        .filter(|u| urls.values().any(|v| v == *u))
        .collect();
    assert!(left.is_empty(), "queues left: {left:?}");
    observer.cleanup().await;
}
