# docs/openapi.yaml against the module's real answers.
#
# Every request below is sent to a running nginx with the module, and its
# answer must be one that the document describes: the status is listed for
# that path and method; every header the document marks required is there
# and its value matches the header's schema; the Content-Type is one of the
# response's media types (no body where the document has no content, as
# for HEAD); and the JSON body is valid against the response's schema.
#
# The schemas are checked by validate() below, a JSON Schema validator for
# the keywords the document uses ($ref, allOf, type, const, enum, pattern,
# minimum, minLength, maxLength, properties, required,
# additionalProperties, patternProperties, propertyNames, maxProperties);
# a keyword it does not know makes it fail, so a new keyword in the
# document cannot be silently ignored.  The document itself is linted by
# util/openapi-lint.

use lib 't/lib';
use RLP;
use RLPHelpers;
use B ();
use JSON::PP ();
use YAML::XS ();

repeat_each(1);

our @Cases;     # filled below; one test each

# the validator's self-test, one test per case in --- init, plus the
# block's own request (status + body)
plan tests => 6 + 37 + 2;

our $Doc = YAML::XS::LoadFile("$RLP::Root/docs/openapi.yaml");

$ENV{TEST_NGINX_FAIL_PORT} = free_port();

our %Known = map { $_ => 1 } qw(
    $ref allOf type const enum pattern minimum minLength maxLength
    properties required additionalProperties patternProperties
    propertyNames maxProperties description example
);

sub resolve {
    my $node = shift;
    my $seen = 0;
    while (ref $node eq 'HASH' && exists $node->{'$ref'}
           && keys %$node == 1)
    {
        $node = pointer($node->{'$ref'});
        die "\$ref loop\n" if ++$seen > 20;
    }
    return $node;
}

sub pointer {
    my $ref = shift;
    die "only local references: $ref\n" unless $ref =~ m{^#/(.*)$};
    my $node = $Doc;
    for my $p (split m{/}, $1) {
        $p =~ s/~1/\//g;
        $p =~ s/~0/~/g;
        die "unresolved $ref\n" unless ref $node eq 'HASH'
                                        && exists $node->{$p};
        $node = $node->{$p};
    }
    return $node;
}

sub json_type {
    my $v = shift;
    return 'null' unless defined $v;
    return 'boolean' if JSON::PP::is_bool($v);
    return 'object' if ref $v eq 'HASH';
    return 'array' if ref $v eq 'ARRAY';
    my $f = B::svref_2object(\$v)->FLAGS;
    if ($f & (B::SVp_IOK | B::SVp_NOK) && !($f & B::SVp_POK)) {
        return $v == int($v) ? 'integer' : 'number';
    }
    return 'string';
}

sub _eq {
    my ($a, $b) = @_;
    return JSON::PP->new->canonical->allow_nonref->encode($a)
           eq JSON::PP->new->canonical->allow_nonref->encode($b);
}

# Returns the list of violations of $schema by $v at $path.
sub validate {
    my ($schema, $v, $path) = @_;
    my @err;

    return () if ref $schema ne 'HASH';

    for my $k (keys %$schema) {
        die "validate(): unknown keyword \"$k\" at $path\n" unless $Known{$k};
    }

    push @err, validate(pointer($schema->{'$ref'}), $v, $path)
        if exists $schema->{'$ref'};

    push @err, validate($_, $v, $path) for @{ $schema->{allOf} // [] };

    my $t = json_type($v);

    if (my $want = $schema->{type}) {
        my @want = ref $want ? @$want : ($want);
        my $ok = grep { $_ eq $t || ($_ eq 'number' && $t eq 'integer') }
                 @want;
        push @err, "$path: $t, not @want" unless $ok;
    }

    push @err, "$path: not the constant \"$schema->{const}\""
        if exists $schema->{const} && !_eq($v, $schema->{const});

    push @err, "$path: not one of @{ $schema->{enum} }"
        if $schema->{enum} && !grep { _eq($v, $_) } @{ $schema->{enum} };

    if ($t eq 'string') {
        push @err, "$path: \"$v\" does not match $schema->{pattern}"
            if defined $schema->{pattern} && $v !~ /$schema->{pattern}/;
        push @err, "$path: shorter than $schema->{minLength}"
            if defined $schema->{minLength}
               && length $v < $schema->{minLength};
        push @err, "$path: longer than $schema->{maxLength}"
            if defined $schema->{maxLength}
               && length $v > $schema->{maxLength};
    }

    if ($t eq 'integer' || $t eq 'number') {
        push @err, "$path: below $schema->{minimum}"
            if defined $schema->{minimum} && $v < $schema->{minimum};
    }

    if ($t eq 'object') {
        my $props = $schema->{properties} // {};
        my $pp = $schema->{patternProperties} // {};

        for my $r (@{ $schema->{required} // [] }) {
            push @err, "$path: \"$r\" is missing" unless exists $v->{$r};
        }

        push @err, "$path: more than $schema->{maxProperties} properties"
            if defined $schema->{maxProperties}
               && keys %$v > $schema->{maxProperties};

        for my $k (sort keys %$v) {
            my $matched = 0;

            if (exists $props->{$k}) {
                $matched = 1;
                push @err, validate($props->{$k}, $v->{$k}, "$path.$k");
            }

            for my $re (sort keys %$pp) {
                next unless $k =~ /$re/;
                $matched = 1;
                push @err, validate($pp->{$re}, $v->{$k}, "$path.$k");
            }

            push @err, validate($schema->{propertyNames}, $k,
                                "$path (key \"$k\")")
                if $schema->{propertyNames};

            next if $matched || !exists $schema->{additionalProperties};

            my $ap = $schema->{additionalProperties};
            if (ref $ap eq 'HASH') {
                push @err, validate($ap, $v->{$k}, "$path.$k");
            } elsif (!$ap) {
                push @err, "$path: \"$k\" is not allowed";
            }
        }
    }

    return @err;
}

# Sends one request, checks the answer against the document (one test).
sub check {
    my ($name, $want_status, %o) = @_;
    my @err;

    my $method = lc($o{method} // 'GET');
    my ($path) = $o{path} =~ /^([^?]*)/;

    local $ENV{TEST_NGINX_SERVER_PORT} = $o{port} if $o{port};
    my $r = http_request(%o);

    push @err, "status $r->{status}, expected $want_status"
        . ($r->{error} ? " ($r->{error})" : '')
        unless $r->{status} == $want_status;

    my $op = $Doc->{paths}{$path}{$method};
    my $resp = $op ? resolve($op->{responses}{$r->{status}}) : undef;

    if (!$op) {
        push @err, "no operation $method $path in the document";
    } elsif (!$resp) {
        push @err, "status $r->{status} is not documented for $method $path";
    } else {
        for my $h (sort keys %{ $resp->{headers} // {} }) {
            my $hd = resolve($resp->{headers}{$h});
            my $got = $r->{headers}{lc $h};
            if (!defined $got) {
                push @err, "header $h is missing" if $hd->{required};
                next;
            }
            push @err, map { "header $h: $_" }
                       validate($hd->{schema}, $got, $h);
        }

        my $content = $resp->{content};
        my $ct = $r->{headers}{'content-type'} // '';
        (my $mt = $ct) =~ s/\s*;.*//;

        if (!$content) {
            push @err, "a body where the document has none"
                if length $r->{body};
        } elsif (!$content->{$mt}) {
            push @err, "Content-Type \"$ct\" is not documented";
        } elsif ($mt eq 'application/json') {
            my $doc = eval { JSON::PP->new->decode($r->{body}) };
            if (!defined $doc) {
                push @err, "the body is not JSON: $@";
            } else {
                push @err, validate($content->{$mt}{schema}, $doc, 'body');
            }
        }
    }

    Test::More::is(join("\n", @err), '',
                   "$name: " . uc($method) . " $r->{status} conforms to"
                   . " docs/openapi.yaml");
    return $r;
}

sub q_ {
    my ($id, $token, @more) = @_;
    return join '&', api_path($id, $token), @more;
}

for my $f (qw(check q_)) {
    no strict 'refs';
    *{"Test::Nginx::Util::$f"} = \&{"main::$f"};
}

# the validator refuses what it should (6 tests)
{
    my $good = JSON::PP->new->decode(
        '{"status":"success","current_policy":"strict","has_active_plan":'
        . 'false,"free_policies":{"0":"strict"},"policies":{"0":{"id":1,'
        . '"name":"S","slug":"strict","description":"","limits":'
        . '{"concurrent_limit":1},"available":true}}}');
    my $schema = { '$ref' => '#/components/schemas/PolicyDocument' };
    Test::More::is(join(';', validate($schema, $good, 'body')), '',
                   'validator: a good document passes');

    my @bad = (
        [ sub { $_[0]{policies} = [ $_[0]{policies}{0} ] },
          'array, not object' ],
        [ sub { $_[0]{extra} = 1 }, '"extra" is not allowed' ],
        [ sub { $_[0]{policies}{0}{limits}{concurrent_limit} = -1 },
          'below 0' ],
        [ sub { $_[0]{free_policies}{x} = 'strict' },
          'does not match' ],
        [ sub { $_[0]{policies}{0}{id} = '1' }, 'string, not integer' ],
    );
    for my $b (@bad) {
        my $doc = JSON::PP->new->decode(JSON::PP->new->encode($good));
        $b->[0]->($doc);
        my @err = validate($schema, $doc, 'body');
        Test::More::ok((grep { index($_, $b->[1]) >= 0 } @err),
                       "validator refuses: $b->[1]")
            or Test::More::diag(join "\n", @err);
    }
}

reset_fixtures();

END {
    local ($?, $@);
    eval { pg_ensure_up(); restore_schema(); reset_fixtures(); 1 };
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: every documented answer, from the module itself
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" query_timeout=500ms;
    ratelimit_policy_zone zone=ratelimit:8m;

    server {
        listen 127.0.0.1:$TEST_NGINX_FAIL_PORT;
        server_name failing;

        location = /v2/session/rate-limit {
            ratelimit_policy_api;
            ratelimit_policy_engine_sync /_engine_sync;
        }

        location = /_engine_sync {
            internal;
            return 500;
        }
    }
--- config
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
        ratelimit_policy_engine_sync /_engine_sync;
    }

    location = /_engine_sync {
        internal;
        return 204;
    }
--- init
pg_ensure_up();
reset_fixtures();
wait_listener();
my $json = 'Content-Type: application/json';
my $form = 'Content-Type: application/x-www-form-urlencoded';

check('stored free policy', 200, path => q_('FREE00000002', 'free-token-1001'));
check('no policy: the default', 200,
      path => q_('FREE00000001', 'free-token-1001'));
check('lapsed plan: stored_policy', 200,
      path => q_('LAPS00000001', 'lapsed-token-1003'));
check('unlimited: empty limits, Bearer token', 200,
      path => q_('PAID00000002'),
      headers => ['Authorization: Bearer paid-token-1002']);
check('zero policy', 200, path => q_('ZERO00000001', 'zero-token-1005'));
check('HEAD', 200, method => 'HEAD',
      path => q_('FREE00000002', 'free-token-1001'));
check('HEAD 401', 401, method => 'HEAD',
      path => q_('FREE00000002', 'wrong'));
check('no instance_id', 400, path => q_(undef, 'free-token-1001'));
check('bad instance_id', 400, path => q_('FREE0000000!', 'free-token-1001'));
check('no token', 400, path => q_('FREE00000002'));
check('wrong token', 401, path => q_('FREE00000002', 'paid-token-1002'));
check('unknown token', 401, path => q_('NOPE00000000', 'nobody'));
check('unknown instance', 404, path => q_('NOPE00000000', 'free-token-1001'));

check('PATCH query', 200, method => 'PATCH',
      path => q_('FREE00000003', 'free-token-1001', 'policy_slug=strict'));
check('PATCH JSON', 200, method => 'PATCH',
      path => q_('FREE00000003', 'free-token-1001'), headers => [$json],
      body => '{"policy_slug":"standard_policy","client":"x"}');
check('PATCH form', 200, method => 'PATCH',
      path => q_('FREE00000003', 'free-token-1001'), headers => [$form],
      body => 'policy_slug=strict');
check('PATCH paid, active plan', 200, method => 'PATCH',
      path => q_('PAID00000003', 'paid-token-1002', 'policy_slug=business'));
check('PATCH no slug', 400, method => 'PATCH',
      path => q_('FREE00000003', 'free-token-1001'));
check('PATCH bad JSON', 400, method => 'PATCH',
      path => q_('FREE00000003', 'free-token-1001'), headers => [$json],
      body => '{"policy_slug":');
check('PATCH no instance_id', 400, method => 'PATCH',
      path => q_(undef, 'free-token-1001', 'policy_slug=strict'));
check('PATCH wrong token', 401, method => 'PATCH',
      path => q_('FREE00000003', 'paid-token-1002', 'policy_slug=strict'));
check('PATCH paid without plan', 403, method => 'PATCH',
      path => q_('FREE00000003', 'free-token-1001', 'policy_slug=business'));
check('PATCH unknown instance', 404, method => 'PATCH',
      path => q_('NOPE00000000', 'free-token-1001', 'policy_slug=strict'));
check('PATCH body over 16 KiB', 413, method => 'PATCH',
      path => q_('FREE00000003', 'free-token-1001'), headers => [$json],
      body => '{"policy_slug":"' . ('x' x 17000) . '"}');
check('PATCH text/plain', 415, method => 'PATCH',
      path => q_('FREE00000003', 'free-token-1001'),
      headers => ['Content-Type: text/plain'], body => 'strict');
check('PATCH unknown slug', 422, method => 'PATCH',
      path => q_('FREE00000003', 'free-token-1001', 'policy_slug=nope'));
check('PATCH invalid slug', 422, method => 'PATCH',
      path => q_('FREE00000003', 'free-token-1001', 'policy_slug=a%20b'));
check('PATCH engine fails', 502, method => 'PATCH',
      port => $ENV{TEST_NGINX_FAIL_PORT},
      path => q_('FREE00000003', 'free-token-1001', 'policy_slug=strict'));

check('POST', 405, method => 'POST',
      path => q_('FREE00000002', 'free-token-1001'), body => 'x');
check('PUT', 405, method => 'PUT',
      path => q_('FREE00000002', 'free-token-1001'), body => 'x');
check('DELETE', 405, method => 'DELETE',
      path => q_('FREE00000002', 'free-token-1001'));
check('OPTIONS', 405, method => 'OPTIONS',
      path => q_('FREE00000002', 'free-token-1001'));

# a slow statement: query_timeout is 500ms
slow_instance('SLOW00000042', 3);
check('query timeout', 504, path => q_('SLOW00000042', 'free-token-1001'));
check('PATCH query timeout', 504, method => 'PATCH',
      path => q_('SLOW00000042', 'free-token-1001', 'policy_slug=strict'));
restore_schema();

# PostgreSQL down: an instance that is not cached
pg_stop('fast');
check('database down', 503, path => q_('OTHR00000001', 'other-token-1004'));
check('HEAD database down', 503, method => 'HEAD',
      path => q_('OTHR00000001', 'other-token-1004'));
check('PATCH database down', 503, method => 'PATCH',
      path => q_('OTHR00000001', 'other-token-1004', 'policy_slug=strict'));
pg_start();
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- error_code: 200
--- response_body_like eval
qr/^\{"status":"success","current_policy":"strict",/
