//! Calendar rollover of quotas with an injected clock: the quota clock
//! (`kairos_rs::base::clock::wall_ms`) is shifted, process-wide, so this binary holds one test.

mod support;

use kairos_rs::base::clock::{shift_wall_clock, wall_ms, Date};
use support::{client, config, Gateway, Upstream};

const DAY_MS: u64 = 86_400_000;

async fn hit(gw: &Gateway) -> (u16, String, String) {
    let res = client()
        .get(gw.url("/open"))
        .header("X-Tenant-Id", "acme")
        .send()
        .await
        .unwrap();
    let h = |n: &str| {
        res.headers()
            .get(n)
            .map_or(String::new(), |v| v.to_str().unwrap().to_string())
    };
    (
        res.status().as_u16(),
        h("x-quota-remaining"),
        h("x-quota-reset"),
    )
}

/// Moves the quota clock to `target` (ms since the epoch).
fn set_clock(target: u64) {
    shift_wall_clock(target as i64 - wall_ms() as i64);
}

#[tokio::test]
async fn month_and_day_quotas_roll_over_at_utc_midnight() {
    let up = Upstream::start_ok();
    // 2027-01-30 23:59:58 UTC: two seconds before a new day of the same month.
    let jan30 = Date::parse("2027-01-30").unwrap().days() as u64 * DAY_MS;
    set_clock(jan30 + DAY_MS - 2_000);
    let gw = Gateway::start(&config(
        &up.url(),
        r#"[{"name":"open","path":"/open","upstream":"u"}]"#,
        r#""tenancy":{"quota_store":{"backend":"memory"}},
           "tenants":{"acme":{"quotas":{"monthly_requests":3,"daily_requests":2}}}"#,
    ));
    let (status, remaining, reset) = hit(&gw).await;
    assert_eq!(
        (status, remaining.as_str()),
        (200, "1"),
        "the daily quota is the tighter"
    );
    let reset: u64 = reset.parse().unwrap();
    assert!((1..=2).contains(&reset), "{reset} s until midnight");
    assert_eq!(hit(&gw).await.0, 200);
    let (status, _, reset) = hit(&gw).await;
    assert_eq!((status, reset.parse::<u64>().unwrap() <= 2), (429, true));
    // Past midnight: a new day (daily quota back), the same month (1 of 3 left).
    set_clock(jan30 + DAY_MS + 1_000);
    let (status, remaining, reset) = hit(&gw).await;
    assert_eq!(
        (status, remaining.as_str()),
        (200, "0"),
        "monthly: 3 used of 3"
    );
    // The monthly quota resets with the month: 2027-02-01 00:00, a day away.
    assert_eq!(reset.parse::<u64>().unwrap(), 86_399);
    assert_eq!(hit(&gw).await.0, 429, "the month is used up");
    // 2027-02-01: a new month.
    let feb1 = Date::parse("2027-02-01").unwrap().days() as u64 * DAY_MS;
    set_clock(feb1 + 5_000);
    let (status, remaining, _) = hit(&gw).await;
    assert_eq!((status, remaining.as_str()), (200, "1"));
    assert_eq!(up.count(), 4);
}
