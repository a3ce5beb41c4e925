# Builds the dynamic module against the packaged nginx (Debian nginx-dev)
# and drives the demo and the test suite.
#
#   make            build/ngx_http_ratelimit_policy_module.so
#   make test       install what is missing, build, run the whole suite
#   make demo       local PostgreSQL + nginx with the module on :8080
#   make demo-stop  stop the demo

NGX_SRC   ?= /usr/share/nginx/src
BUILD     := $(CURDIR)/build
MODULE    := $(BUILD)/ngx_http_ratelimit_policy_module.so
SOURCES   := config ngx_http_ratelimit_policy_module.c \
             $(wildcard src/*.c src/*.h)
CFLAGS_X  := -Wall -Wextra -Werror -Wno-unused-parameter

.PHONY: all deps test demo demo-stop clean

all: $(MODULE)

$(BUILD)/Makefile: config
	@test -x $(NGX_SRC)/configure || { \
	    echo "nginx-dev is not installed: run 'make deps' or" \
	         "'apt-get install nginx-dev'" >&2; exit 1; }
	mkdir -p $(BUILD)
	cd $(NGX_SRC) && bash -c '. ./conf_flags; ./configure \
	    --with-cc-opt="$$(dpkg-buildflags --get CFLAGS) -fPIC \
	        $$(dpkg-buildflags --get CPPFLAGS) $(CFLAGS_X)" \
	    --with-ld-opt="$$(dpkg-buildflags --get LDFLAGS) -fPIC" \
	    "$${NGX_CONF_FLAGS[@]}" \
	    --add-dynamic-module=$(CURDIR) --builddir=$(BUILD)' \
	    > $(BUILD)/configure.log 2>&1 \
	    || { tail -20 $(BUILD)/configure.log; exit 1; }

$(MODULE): $(BUILD)/Makefile $(SOURCES)
	cd $(NGX_SRC) && $(MAKE) -f $(BUILD)/Makefile modules

deps:
	util/deps

test: deps
	$(MAKE) all
	util/test

demo: deps
	$(MAKE) all
	util/demo start

demo-stop:
	util/demo stop

clean:
	rm -rf $(BUILD) t/servroot
