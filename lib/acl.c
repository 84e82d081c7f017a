/* SPDX-License-Identifier: MIT */
/* Access control rules: see acl.h. */
#include "acl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt/topic.h"

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') {
        s++;
    }
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) {
        *--e = 0;
    }
    return s;
}

static void rule_free(AclRule *r)
{
    for (size_t i = 0; i < r->n_filters; i++) {
        free(r->filters[i]);
    }
    free(r->filters);
    free(r->name);
    free(r->text);
}

void acl_free(Acl *acl)
{
    for (size_t i = 0; i < acl->n_rules; i++) {
        rule_free(&acl->rules[i]);
    }
    for (size_t i = 0; i < acl->n_admins; i++) {
        free(acl->admins[i].name);
    }
    free(acl->rules);
    free(acl->admins);
    *acl = (Acl){0};
}

/* "user NAME", "group NAME", "uid N", "gid N", "all"; or with ':' for admin lists. */
static int parse_subject(char *s, char sep, enum acl_subject *kind, char **name, unsigned *id)
{
    s = trim(s);
    if (strcmp(s, "all") == 0) {
        *kind = ACL_ALL;
        return 0;
    }
    char *arg = strchr(s, sep);
    if (!arg) {
        return -EINVAL;
    }
    *arg++ = 0;
    arg = trim(arg);
    s = trim(s);
    if (!*arg) {
        return -EINVAL;
    }
    if (strcmp(s, "user") == 0 || strcmp(s, "group") == 0) {
        *kind = s[0] == 'u' ? ACL_USER : ACL_GROUP;
        *name = strdup(arg);
        return *name ? 0 : -ENOMEM;
    }
    if (strcmp(s, "uid") == 0 || strcmp(s, "gid") == 0) {
        char *end;
        unsigned long v = strtoul(arg, &end, 10);
        if (*end || v > 0xffffffffUL) {
            return -EINVAL;
        }
        *kind = s[0] == 'u' ? ACL_UID : ACL_GID;
        *id = (unsigned)v;
        return 0;
    }
    return -EINVAL;
}

/* Whether `f` is a valid filter once %u is filled in: checked with a stand-in name. */
static int check_rule_filter(const char *f)
{
    char *probe = strdup(f);
    if (!probe) {
        return -ENOMEM;
    }
    for (char *p = strstr(probe, "%u"); p; p = strstr(p + 2, "%u")) {
        p[0] = 'x';
        p[1] = 'x';
    }
    int r = mqtt_filter_check(VIEW_STR(probe)) < 0 ? -EINVAL : 0;
    free(probe);
    return r;
}

static int parse_rule(Acl *acl, bool deny, char *subject, const char *value, const char *text,
                      char *err, size_t errlen)
{
    AclRule r = {.deny = deny, .resolved = true};
    if (parse_subject(subject, ' ', &r.subject, &r.name, &r.id) < 0) {
        snprintf(err, errlen,
                 "[acl] rule '%s': who must be user NAME, group NAME, uid N, gid N "
                 "or all",
                 text);
        return -EINVAL;
    }
    r.resolved = r.subject != ACL_USER && r.subject != ACL_GROUP;
    char *v = strdup(value), *save = NULL;
    if (!v) {
        rule_free(&r);
        return -ENOMEM;
    }
    char *action = strtok_r(trim(v), " \t", &save);
    if (action && strcmp(action, "publish") == 0) {
        r.actions = ACL_PUBLISH;
    } else if (action && strcmp(action, "subscribe") == 0) {
        r.actions = ACL_SUBSCRIBE;
    } else if (action && strcmp(action, "pubsub") == 0) {
        r.actions = ACL_PUBLISH | ACL_SUBSCRIBE;
    } else {
        snprintf(err, errlen,
                 "[acl] rule '%s': the value must start with publish, subscribe or "
                 "pubsub",
                 text);
        free(v);
        rule_free(&r);
        return -EINVAL;
    }
    for (char *f = strtok_r(NULL, ", \t", &save); f; f = strtok_r(NULL, ", \t", &save)) {
        int e = check_rule_filter(f);
        if (e < 0) {
            if (e == -EINVAL) {
                snprintf(err, errlen, "[acl] rule '%s': '%s' is not a valid topic filter", text, f);
            }
            free(v);
            rule_free(&r);
            return e;
        }
        char **nf = realloc(r.filters, (r.n_filters + 1) * sizeof(*nf));
        if (!nf || !(nf[r.n_filters] = strdup(f))) {
            free(nf ? nf : r.filters);
            r.filters = NULL;
            r.n_filters = 0;
            free(v);
            rule_free(&r);
            return -ENOMEM;
        }
        r.filters = nf;
        r.n_filters++;
    }
    free(v);
    if (!r.n_filters) {
        snprintf(err, errlen, "[acl] rule '%s': no topic filter", text);
        rule_free(&r);
        return -EINVAL;
    }
    AclRule *nr = realloc(acl->rules, (acl->n_rules + 1) * sizeof(*nr));
    if (nr) {
        acl->rules = nr;
    }
    if (!nr || !(r.text = strdup(text))) {
        rule_free(&r);
        return -ENOMEM;
    }
    acl->rules[acl->n_rules++] = r;
    return 0;
}

static int parse_admins(Acl *acl, const char *value, char *err, size_t errlen)
{
    char *v = strdup(value), *save = NULL;
    if (!v) {
        return -ENOMEM;
    }
    for (char *s = strtok_r(v, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
        AclAdmin a = {0};
        if (parse_subject(s, ':', &a.subject, &a.name, &a.id) < 0 || a.subject == ACL_ALL) {
            snprintf(err, errlen,
                     "[acl] admin: '%s' must be user:NAME, group:NAME, uid:N or "
                     "gid:N",
                     trim(s));
            free(v);
            return -EINVAL;
        }
        a.resolved = a.subject != ACL_USER && a.subject != ACL_GROUP;
        AclAdmin *na = realloc(acl->admins, (acl->n_admins + 1) * sizeof(*na));
        if (!na) {
            free(a.name);
            free(v);
            return -ENOMEM;
        }
        acl->admins = na;
        acl->admins[acl->n_admins++] = a;
    }
    free(v);
    return 0;
}

int acl_parse_line(Acl *acl, const char *key, const char *value, char *err, size_t errlen)
{
    char text[600];
    snprintf(text, sizeof(text), "%s = %s", key, value);
    if (strcmp(key, "admin") == 0) {
        return parse_admins(acl, value, err, errlen);
    }
    if (strcmp(key, "max_connections_per_uid") == 0 ||
        strcmp(key, "max_subscriptions_per_uid") == 0) {
        char *end;
        unsigned long n = strtoul(value, &end, 10);
        if (!*value || *end || n > 1000000) {
            snprintf(err, errlen, "[acl] %s must be a whole number from 0 to 1000000", key);
            return -EINVAL;
        }
        *(key[4] == 'c' ? &acl->max_connections_per_uid : &acl->max_subscriptions_per_uid) =
            (unsigned)n;
        return 0;
    }
    bool deny = strncmp(key, "deny ", 5) == 0;
    if (!deny && strncmp(key, "allow ", 6) != 0) {
        snprintf(err, errlen,
                 "[acl] unknown key '%s' (allow WHO, deny WHO, admin, "
                 "max_connections_per_uid, max_subscriptions_per_uid)",
                 key);
        return -EINVAL;
    }
    /* A cut name would be another name: refuse it rather than match someone else. */
    char subject[256];
    if (snprintf(subject, sizeof(subject), "%s", key + (deny ? 5 : 6)) >= (int)sizeof(subject)) {
        snprintf(err, errlen, "[acl] '%.40s...': the who part is too long", key);
        return -EINVAL;
    }
    return parse_rule(acl, deny, subject, value, text, err, errlen);
}

static bool in_groups(const AclPeer *p, unsigned gid)
{
    for (size_t i = 0; i < p->n_gids; i++) {
        if (p->gids[i] == gid) {
            return true;
        }
    }
    return false;
}

static bool subject_matches(enum acl_subject kind, unsigned id, bool resolved, const AclPeer *p)
{
    switch (kind) {
    case ACL_ALL:
        return true;
    case ACL_USER:
    case ACL_UID:
        return resolved && p->uid == id;
    case ACL_GROUP:
    case ACL_GID:
        return resolved && in_groups(p, id);
    }
    return false;
}

/* Occurrences of "%u" in [p, end), scanned left to right as substitution does. */
static size_t count_u(const char *p, const char *end)
{
    size_t n = 0;
    while (p + 1 < end) {
        if (p[0] == '%' && p[1] == 'u') {
            n++;
            p += 2;
        } else {
            p++;
        }
    }
    return n;
}

/* `filter` with %u replaced by `user`: -EINVAL when there is no name, or one that would widen
 * the filter (a level separator or wildcard in it) or make it invalid. */
static int substitute(const char *filter, const char *user, char **ret)
{
    if (!user || !*user || strpbrk(user, "/+#")) {
        return -EINVAL;
    }
    size_t len = strlen(filter), n = count_u(filter, filter + len);
    char *out = malloc(len + n * strlen(user) + 1), *w = out;
    if (!out) {
        return -ENOMEM;
    }
    for (const char *p = filter; *p;) {
        if (p[0] == '%' && p[1] == 'u') {
            w = stpcpy(w, user);
            p += 2;
        } else {
            *w++ = *p++;
        }
    }
    *w = 0;
    if (mqtt_filter_check(VIEW_STR(out)) < 0) {
        free(out);
        return -EINVAL;
    }
    *ret = out;
    return 0;
}

/* `n` levels of "+" at w. */
static char *plus_levels(char *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        w = stpcpy(w, i ? "/+" : "+");
    }
    return w;
}

/* A deny filter for a name that cannot be filled in: in the part matched against topics (a
 * $share/GROUP/ prefix only names a group), each level holding k %u becomes 1 + k * slashes
 * levels of '+'. "#" when that is not a valid filter (too long): deny too much, never too
 * little. *ret_any_name: the first level stands for the name, so '$' topics match it too. */
static int wildcard(const char *filter, size_t slashes, char **ret, bool *ret_any_name)
{
    const char *src = (const char *)mqtt_filter_target(VIEW_STR(filter)).p;
    size_t len = strlen(src), k = count_u(src, src + len);
    bool any_name = count_u(src, strchrnul(src, '/')) > 0;
    char *out = NULL;
    if (!slashes || k <= MQTT_TOPIC_MAX / 2 / slashes) {
        out = malloc(len + 2 * k * slashes + 1);
        if (!out) {
            return -ENOMEM;
        }
        char *w = out;
        for (const char *l = src, *end;; l = end + 1) {
            end = strchrnul(l, '/');
            size_t kl = count_u(l, end);
            w = kl ? plus_levels(w, 1 + kl * slashes) : mempcpy(w, l, (size_t)(end - l));
            if (!*end) {
                break;
            }
            *w++ = '/';
        }
        *w = 0;
    }
    if (!out || mqtt_filter_check(VIEW_STR(out)) < 0) {
        free(out);
        if (!(out = strdup("#"))) {
            return -ENOMEM;
        }
        any_name = true;
    }
    *ret_any_name = any_name;
    *ret = out;
    return 0;
}
static int add_entry(AclView *v, const AclRule *r, char *filter, bool any_name)
{
    AclEntry *ne = filter ? realloc(v->entries, (v->n + 1) * sizeof(*ne)) : NULL;
    if (!ne) {
        free(filter);
        return -ENOMEM;
    }
    v->entries = ne;
    v->entries[v->n++] = (AclEntry){
        .rule = r, .deny = r->deny, .actions = r->actions, .filter = filter, .any_name = any_name};
    return 0;
}

/* The entries one filter of a rule that applies to the peer gives its view. */
static int add_filter(AclView *v, const AclRule *r, const char *filter, const char *user)
{
    if (!strstr(filter, "%u")) {
        return add_entry(v, r, strdup(filter), false);
    }
    char *f;
    bool any_name;
    int e = substitute(filter, user, &f);
    if (e != -EINVAL) {
        return e < 0 ? e : add_entry(v, r, f, false);
    }
    if (!r->deny) {
        return 0; /* allows nothing: no name, no topics of its own */
    }
    /* A deny denies what it would for any name; for a name with '/' also its own levels. */
    size_t slashes = 0;
    for (const char *p = user ? strchr(user, '/') : NULL; p; p = strchr(p + 1, '/')) {
        slashes++;
    }
    for (int pass = 0; pass < (slashes ? 2 : 1); pass++) {
        if ((e = wildcard(filter, pass ? slashes : 0, &f, &any_name)) < 0 ||
            (e = add_entry(v, r, f, any_name)) < 0) {
            return e;
        }
    }
    return 0;
}

/* With part of the peer's groups unknown, a deny rule by a group it is not known to be in
 * might still be meant for it. */
static const AclRule *undecided_group_deny(const Acl *acl, const AclPeer *p)
{
    for (size_t i = 0; p->groups_partial && i < acl->n_rules; i++) {
        const AclRule *r = &acl->rules[i];
        bool by_group = r->subject == ACL_GROUP || r->subject == ACL_GID;
        if (r->deny && by_group && r->resolved && !in_groups(p, r->id)) {
            return r;
        }
    }
    return NULL;
}

int acl_view_build(const Acl *acl, const AclPeer *peer, bool default_admin, AclView *ret)
{
    if (undecided_group_deny(acl, peer)) {
        return -EACCES;
    }
    AclView v = {.open = acl->n_rules == 0, .admin = default_admin};
    for (size_t i = 0; i < acl->n_admins; i++) {
        const AclAdmin *a = &acl->admins[i];
        v.admin |= subject_matches(a->subject, a->id, a->resolved, peer);
    }
    for (size_t i = 0; i < acl->n_rules; i++) {
        const AclRule *r = &acl->rules[i];
        if (!subject_matches(r->subject, r->id, r->resolved, peer)) {
            continue;
        }
        for (size_t k = 0; k < r->n_filters; k++) {
            int e = add_filter(&v, r, r->filters[k], peer->user);
            if (e < 0) {
                acl_view_free(&v);
                return e;
            }
        }
    }
    *ret = v;
    return 0;
}

void acl_view_free(AclView *v)
{
    for (size_t i = 0; i < v->n; i++) {
        free(v->entries[i].filter);
    }
    free(v->entries);
    *v = (AclView){0};
}

/* Split off the next level of *rest. */
static View level_of(View *rest, bool *more)
{
    const uint8_t *slash = memchr(rest->p, '/', rest->n);
    View l = VIEW(rest->p, slash ? (size_t)(slash - rest->p) : rest->n);
    *more = slash != NULL;
    *rest = slash ? VIEW(slash + 1, rest->n - l.n - 1) : VIEW(rest->p + rest->n, 0);
    return l;
}

bool acl_filter_covers(View a, View b)
{
    a = mqtt_filter_target(a);
    b = mqtt_filter_target(b);
    /* $-topics are not reached through a leading wildcard (MQTT 4.7.2). */
    if (a.n && (a.p[0] == '+' || a.p[0] == '#') && b.n && b.p[0] == '$') {
        return false;
    }
    bool a_more = true, b_more = true;
    while (a_more) {
        View la = level_of(&a, &a_more);
        if (view_eq_str(la, "#")) {
            return true; /* also covers b's parent level: "x/#" covers "x" */
        }
        if (!b_more) {
            return false; /* a needs a level b's topics do not have */
        }
        View lb = level_of(&b, &b_more);
        if (view_eq_str(lb, "#") || (view_eq_str(lb, "+") && !view_eq_str(la, "+"))) {
            return false; /* b reaches topics a does not */
        }
        if (!view_eq_str(la, "+") && !view_eq(la, lb)) {
            return false;
        }
    }
    return !b_more;
}

/* mqtt_topic_matches without the '$' exception of MQTT 4.7.2: for a first level that stands
 * for any user name, and names may start with '$'. */
static bool matches_any_name(View f, View topic)
{
    f = mqtt_filter_target(f);
    bool f_more = true, t_more = true;
    while (f_more) {
        View lf = level_of(&f, &f_more);
        if (view_eq_str(lf, "#")) {
            return true; /* also the parent level: "a/#" matches "a" */
        }
        if (!t_more) {
            return false;
        }
        View lt = level_of(&topic, &t_more);
        if (!view_eq_str(lf, "+") && !view_eq(lf, lt)) {
            return false;
        }
    }
    return !t_more;
}

/* Whether some topic matches both filters. */
static bool filters_overlap(View a, View b)
{
    a = mqtt_filter_target(a);
    b = mqtt_filter_target(b);
    bool a_more = true, b_more = true;
    while (a_more && b_more) {
        View la = level_of(&a, &a_more), lb = level_of(&b, &b_more);
        if (view_eq_str(la, "#") || view_eq_str(lb, "#")) {
            return true;
        }
        if (!view_eq_str(la, "+") && !view_eq_str(lb, "+") && !view_eq(la, lb)) {
            return false;
        }
    }
    /* One ended: overlap only if the other ends too, or continues with just "#". */
    View rest = a_more ? a : b;
    return !(a_more || b_more) || view_eq_str(rest, "#");
}

bool acl_allows(const AclView *v, unsigned action, View what, char *why, size_t n)
{
    if (v->open) {
        return true;
    }
    bool allowed = false;
    for (size_t i = 0; i < v->n; i++) {
        const AclEntry *e = &v->entries[i];
        if (!(e->actions & action)) {
            continue;
        }
        View f = VIEW_STR(e->filter);
        bool hit;
        if (action == ACL_PUBLISH) {
            hit = e->any_name ? matches_any_name(f, what) : mqtt_topic_matches(f, what);
        } else if (e->deny) {
            hit = filters_overlap(f, what); /* it could receive a denied topic */
        } else {
            hit = acl_filter_covers(f, what);
        }
        if (hit && e->deny) {
            snprintf(why, n, "denied by [acl] rule '%s'", e->rule->text);
            return false;
        }
        allowed |= hit;
    }
    if (!allowed) {
        snprintf(why, n, "no [acl] rule allows this peer to %s %.*s",
                 action == ACL_PUBLISH ? "publish to" : "subscribe to", (int)what.n,
                 (const char *)what.p);
    }
    return allowed;
}
