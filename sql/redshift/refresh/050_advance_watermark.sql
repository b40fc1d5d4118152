UPDATE ${schema}.load_state SET watermark = target WHERE name = 'events';
